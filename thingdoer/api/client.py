"""The synchronous apid client the CLI (and the tests) use. Speaks only the HTTP API.

Every failure becomes a thingdoer error with a one-line message: the API's own ``Status``
message, or "cannot reach apid at ..." when nothing answers.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterator

import httpx

from ..errors import ThingdoerError, Unavailable
from ..models import Node, Pod, streams
from .status import error_from_status

DEFAULT_SERVER = "http://127.0.0.1:7070"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"


class Client:
    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, timeout=httpx.Timeout(timeout, read=None))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise Unavailable(f"cannot reach apid at {self.server} ({err}): "
                              "is the cluster up? (thingdoer up)") from err
        _raise_for_status(response)
        return response

    def _stream(self, path: str, params: dict | None = None, headers: dict | None = None) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", path, params=params, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response)
                yield from response.iter_raw()
        except httpx.HTTPError as err:
            raise Unavailable(f"lost the stream from apid at {self.server}: {err}") from err

    @staticmethod
    def pods_path(namespace: str | None) -> str:
        return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"

    # -- pods --------------------------------------------------------------------------

    def create_pod(self, manifest: dict, namespace: str | None = None) -> Pod:
        namespace = namespace or (manifest.get("metadata") or {}).get("namespace") or "default"
        response = self._request("POST", self.pods_path(namespace), json=manifest)
        return Pod.model_validate(response.json())

    def get_pod(self, namespace: str, name: str) -> Pod:
        return Pod.model_validate(self._request("GET", f"{self.pods_path(namespace)}/{name}").json())

    def list_pods(self, namespace: str | None = "default", *, label_selector: str | None = None,
                  field_selector: str | None = None) -> tuple[list[Pod], str]:
        params = {k: v for k, v in (("labelSelector", label_selector),
                                     ("fieldSelector", field_selector)) if v}
        body = self._request("GET", self.pods_path(namespace), params=params).json()
        return [Pod.model_validate(p) for p in body["items"]], body["metadata"]["resourceVersion"]

    def delete_pod(self, namespace: str, name: str, *, grace_period: int | None = None) -> Pod:
        options = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        response = self._request("DELETE", f"{self.pods_path(namespace)}/{name}", json=options)
        return Pod.model_validate(response.json())

    def logs(self, namespace: str, name: str, *, container: str | None = None,
             follow: bool = False, tail_lines: int | None = None, since_seconds: int | None = None,
             since_time: str | None = None, timestamps: bool = False,
             previous: bool = False) -> Iterator[bytes]:
        params = {"follow": "true" if follow else "false"}
        for key, value in (("container", container), ("tailLines", tail_lines),
                           ("sinceSeconds", since_seconds), ("sinceTime", since_time)):
            if value is not None:
                params[key] = str(value)
        for key, value in (("timestamps", timestamps), ("previous", previous)):
            if value:
                params[key] = "true"
        yield from self._stream(f"{self.pods_path(namespace)}/{name}/log", params)

    def exec(self, namespace: str, name: str, command: list[str], *,
             container: str | None = None) -> Iterator[tuple[int, bytes]]:
        """(channel, bytes) of a command run in the pod's container: ``streams.STDOUT`` and
        ``STDERR`` as they come, then ``STATUS`` with the final Status JSON."""
        params = [("command", arg) for arg in command]
        if container:
            params.append(("container", container))
        reader = streams.FrameReader()
        try:
            with self._http.stream("POST", f"{self.pods_path(namespace)}/{name}/exec",
                                   params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response)
                for chunk in response.iter_raw():
                    yield from reader.feed(chunk)
        except httpx.HTTPError as err:
            raise Unavailable(f"lost the exec stream from apid at {self.server}: {err}") from err

    # -- nodes -------------------------------------------------------------------------

    def list_nodes(self) -> list[Node]:
        return [Node.model_validate(n) for n in self._request("GET", "/api/v1/nodes").json()["items"]]

    def get_node(self, name: str) -> Node:
        return Node.model_validate(self._request("GET", f"/api/v1/nodes/{name}").json())

    # -- tables and watches ------------------------------------------------------------

    def get_json(self, path: str, params: dict | None = None) -> dict:
        """Any GET answer as parsed JSON (e.g. a whole PodList, for ``-o json``)."""
        return self._request("GET", path, params=params).json()

    def table(self, path: str, params: dict | None = None) -> dict:
        """The server-side Table for ``path`` (the same rows kubectl prints)."""
        return self._request("GET", path, params=params, headers={"Accept": TABLE_ACCEPT}).json()

    def watch(self, path: str, *, resource_version: str | None = None, table: bool = False,
              params: dict | None = None) -> Iterator[tuple[str, dict]]:
        """(type, object) for each watch event on ``path`` until the stream ends."""
        query = dict(params or {}, watch="true")
        if resource_version:
            query["resourceVersion"] = resource_version
        buffer = b""
        for chunk in self._stream(path, query, {"Accept": TABLE_ACCEPT} if table else None):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        obj = event["object"]
                        raise error_from_status(obj.get("code", 500), obj, "watch failed")
                    yield event["type"], event["object"]

    def wait_pod(self, namespace: str, name: str, condition: Callable[[Pod], bool],
                 timeout: float) -> Pod:
        """Block until ``condition(pod)`` holds; ``TimeoutError`` after ``timeout`` seconds.

        Reads once, then follows the pod's watch, so no change in between is missed.
        """
        deadline = time.monotonic() + timeout
        while True:
            pods, revision = self.list_pods(namespace, field_selector=f"metadata.name={name}")
            if not pods:
                raise error_from_status(404, None, f'pods "{name}" not found')
            if condition(pods[0]):
                return pods[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for pod {name}")
            params = {"fieldSelector": f"metadata.name={name}",
                      "timeoutSeconds": str(max(1, int(remaining + 0.999)))}
            for kind, obj in self.watch(self.pods_path(namespace), resource_version=revision,
                                        params=params):
                if kind == "DELETED":
                    raise error_from_status(404, None, f'pods "{name}" was deleted')
                pod = Pod.model_validate(obj)
                if condition(pod):
                    return pod
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for pod {name}")


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_from_status(response.status_code, body if isinstance(body, dict) else None,
                            f"apid answered {response.status_code}: {response.text.strip()[:200]}")


__all__ = ["Client", "DEFAULT_SERVER", "ThingdoerError"]
