"""apid: the HTTP API, a subset of Kubernetes core/v1 (pods, nodes, logs, watch, discovery).

Handlers are thin: parse the request, call the registries, render. Every error leaves as a
Kubernetes ``Status`` (``status.py``); invalid input is refused before anything is written.
Tables (``tables.py``) are served when the client asks for them, as kubectl does. Pod logs
live on the pod's node: apid proxies them from the node agent's ``/containerLogs`` endpoint
(the address is on the Node: ``status.addresses`` InternalIP + ``daemonEndpoints``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Callable

import httpx
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..cluster.keys import Keys
from ..cluster.registry import Nodes, Pods, Registry
from ..cluster.store import Store
from ..serving import serve_http
from ..errors import BadRequest, Conflict, Gone, Invalid, NotFound, ThingdoerError, Unavailable
from ..models import NodeList, Pod, PodList, admit_pod, now, parse_object
from ..models import streams
from ..models.streams import MEDIA_TYPE as EXEC_MEDIA
from . import discovery, metrics, tables
from .selectors import field_selector, label_selector
from .status import status_body

log = logging.getLogger(__name__)

TABLE_MEDIA = "as=Table"
WS_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # kubectl offers these first
LOG_PARAMS = ("follow", "tailLines", "sinceSeconds", "sinceTime", "timestamps", "previous")


class Api:
    def __init__(self, store: Store, keys: Keys):
        self.store = store
        self.keys = keys
        self.pods = Pods(store, keys)
        self.nodes = Nodes(store, keys)
        self._node_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))

    # -- discovery ---------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        return JSONResponse(discovery.version())

    async def api(self, request: Request) -> Response:
        return JSONResponse(discovery.api_versions(request.url.netloc))

    async def apis(self, request: Request) -> Response:
        return JSONResponse({**discovery.api_groups(), "groups": [metrics.API_GROUP]})

    async def core_v1(self, request: Request) -> Response:
        return JSONResponse(discovery.core_v1_resources())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(discovery.openapi_root())

    async def openapi_v1(self, request: Request) -> Response:
        return JSONResponse(discovery.openapi_v1())

    async def healthz(self, request: Request) -> Response:
        await self.store.revision()
        return PlainTextResponse("ok")

    async def namespaces(self, request: Request) -> Response:
        pods, revision = await self.pods.list()
        names = sorted({p.metadata.namespace or "default" for p in pods} | {"default"})
        return JSONResponse({"kind": "NamespaceList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": str(revision)},
                             "items": [_namespace(n) for n in names]})

    async def namespace(self, request: Request) -> Response:
        return JSONResponse(_namespace(request.path_params["namespace"]))

    # -- pods --------------------------------------------------------------------------

    async def list_pods(self, request: Request) -> Response:
        namespace = request.path_params.get("namespace")
        return await self._list(request, self.pods, self.keys.pods(namespace), "Pod", PodList)

    async def create_pod(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        data = await _body(request)
        if isinstance(data, dict) and data.get("kind") not in (None, "Pod"):
            raise BadRequest(f'kind {data.get("kind")!r} cannot be created at the pods endpoint')
        pod = admit_pod(parse_object(Pod, data, kind="Pod"), namespace)
        if pod.spec.nodeName:
            await self.nodes.get(pod.spec.nodeName)  # binding at create needs a real node
        if request.query_params.get("dryRun"):
            return JSONResponse(pod.dump(), status_code=201)
        try:
            created = await self.pods.create(pod)
        except ThingdoerError as err:
            if err.reason == "AlreadyExists":
                raise type(err)(f'pods "{pod.metadata.name}" already exists') from err
            raise
        return JSONResponse(created.dump(), status_code=201)

    async def get_pod(self, request: Request) -> Response:
        pod = await self.pods.get(request.path_params["namespace"], request.path_params["name"])
        return self._render(request, "Pod", [pod], pod.metadata.resourceVersion, single=True)

    async def delete_pod(self, request: Request) -> Response:
        """Graceful deletion as Kubernetes does it: a pod on a node is marked with
        ``deletionTimestamp`` and its node removes it once the containers have stopped;
        a pod no node holds is removed at once."""
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        options = await _body(request, default={})
        grace = options.get("gracePeriodSeconds") if isinstance(options, dict) else None
        if grace is None and request.query_params.get("gracePeriodSeconds"):
            grace = int(request.query_params["gracePeriodSeconds"])
        if grace is not None and (not isinstance(grace, int) or grace < 0):
            raise Invalid(f"gracePeriodSeconds: Invalid value: {grace!r}: must be a whole number >= 0")
        pod = await self.pods.get(namespace, name)
        if pod.spec.nodeName and not await self._node_is_gone(pod.spec.nodeName):
            def mark(p: Pod) -> bool:
                if p.metadata.deletionTimestamp:
                    return False
                p.metadata.deletionTimestamp = now()
                p.metadata.deletionGracePeriodSeconds = (
                    grace if grace is not None else p.spec.terminationGracePeriodSeconds)
                return True
            pod = await self.pods.mutate(self.keys.pod(namespace, name), mark)
        else:
            await self.pods.delete_at(self.keys.pod(namespace, name))
        return JSONResponse(pod.dump())

    async def _node_is_gone(self, name: str) -> bool:
        """A pod on a node that no longer exists or no longer runs has no one to stop it."""
        if await self.store.get(self.keys.alive(name)) is not None:
            return False
        try:
            return not (await self.nodes.get(name)).ready
        except NotFound:
            return True

    async def pod_log(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        container, agent = await self._pod_agent(namespace, name, request.query_params.get("container"))
        url = f"{agent}/containerLogs/{namespace}/{name}/{container}"
        params = {k: v for k, v in request.query_params.items() if k in LOG_PARAMS}
        return await self._proxy_stream(url, params)

    async def pod_exec(self, request: Request) -> Response:
        """Run a command in a pod's container on its node; the node's frames pass through."""
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        container, agent = await self._pod_agent(namespace, name, request.query_params.get("container"))
        url = f"{agent}/exec/{namespace}/{name}/{container}"
        command = request.query_params.getlist("command")
        if not command:
            raise BadRequest("give the command to run as command=... (one per argument)")
        return await self._proxy_stream(url, {"command": command}, method="POST",
                                        media_type=EXEC_MEDIA)

    async def pod_exec_websocket(self, websocket: WebSocket) -> None:
        """kubectl exec: Kubernetes' websocket channel protocol (v4/v5.channel.k8s.io), each
        message one channel byte + data — the node's frames, re-wrapped. No stdin yet."""
        p, query = websocket.path_params, websocket.query_params
        offered = websocket.scope.get("subprotocols") or []
        protocol = next((s for s in WS_PROTOCOLS if s in offered), None)
        await websocket.accept(subprotocol=protocol)
        try:
            if protocol is None:
                raise BadRequest(f"exec speaks the websocket subprotocols {', '.join(WS_PROTOCOLS)}")
            if query.get("stdin") in ("true", "1") or query.get("tty") in ("true", "1"):
                raise BadRequest("exec has no stdin or TTY yet: run it without -i and -t")
            container, agent = await self._pod_agent(p["namespace"], p["name"], query.get("container"))
            command = query.getlist("command")
            if not command:
                raise BadRequest("give the command to run")
            url = f"{agent}/exec/{p['namespace']}/{p['name']}/{container}"
            reader = streams.FrameReader()
            try:
                async with self._node_client.stream("POST", url, params={"command": command}) as upstream:
                    if upstream.status_code != 200:
                        raise Conflict((await upstream.aread()).decode(errors="replace").strip())
                    async for chunk in upstream.aiter_raw():
                        for channel, data in reader.feed(chunk):
                            await websocket.send_bytes(bytes([channel]) + data)
            except httpx.HTTPError as err:
                raise Unavailable(f"cannot reach the node agent at {url}: {err}") from err
        except ThingdoerError as err:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": err.reason, "message": str(err)}
            await websocket.send_bytes(bytes([streams.STATUS]) + json.dumps(status).encode())
        await websocket.close()

    async def _pod_agent(self, namespace: str, name: str, container: str | None) -> tuple[str, str]:
        """(container name, base URL of the node agent) of a pod's container: the one named,
        or the pod's only one."""
        pod = await self.pods.get(namespace, name)
        names = [c.name for c in pod.spec.containers]
        if container is None:
            if len(names) > 1:
                raise BadRequest(f"a container name must be specified for pod {name}, "
                                 f"choose one of: [{' '.join(names)}]")
            container = names[0]
        elif container not in names:
            raise BadRequest(f"container {container} is not valid for pod {name}")
        if not pod.spec.nodeName:
            raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start: '
                             "the pod is not scheduled yet")
        return container, (await self.nodes.get(pod.spec.nodeName)).agent_url()

    async def _proxy_stream(self, url: str, params: dict, method: str = "GET",
                            media_type: str = "text/plain") -> Response:
        try:
            upstream = await self._node_client.send(
                self._node_client.build_request(method, url, params=params), stream=True)
        except httpx.HTTPError as err:
            raise Unavailable(f"cannot reach the node agent at {url}: {err}") from err
        if upstream.status_code != 200:
            body = (await upstream.aread()).decode(errors="replace")
            await upstream.aclose()
            kind = {400: BadRequest, 409: Conflict}.get(upstream.status_code, NotFound)
            raise kind(body.strip() or f"node agent answered {upstream.status_code}")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), media_type=media_type)

    # -- nodes -------------------------------------------------------------------------

    async def list_nodes(self, request: Request) -> Response:
        return await self._list(request, self.nodes, self.keys.nodes(), "Node", NodeList)

    async def get_node(self, request: Request) -> Response:
        node = await self.nodes.get(request.path_params["name"])
        return self._render(request, "Node", [node], node.metadata.resourceVersion, single=True)

    async def delete_node(self, request: Request) -> Response:
        node = await self.nodes.get(request.path_params["name"])
        await self.nodes.delete_at(self.keys.node(node.metadata.name))
        return JSONResponse(node.dump())

    # -- shared list / watch / render --------------------------------------------------

    async def _list(self, request: Request, registry: Registry, prefix: str, kind: str,
                    list_model) -> Response:
        query = request.query_params
        keep = _predicate(query)
        if query.get("watch") in ("true", "1"):
            return StreamingResponse(
                self._watch(request, registry, prefix, kind, keep),
                media_type="application/json")
        objects, revision = await registry.list(prefix)
        objects = [o for o in objects if keep(o)]
        if _wants_table(request):
            return JSONResponse(_table(request, kind, objects, str(revision)))
        listed = list_model(items=objects)
        listed.metadata.resourceVersion = str(revision)
        return JSONResponse(listed.dump())

    def _render(self, request: Request, kind: str, objects: list, revision: str | None,
                *, single: bool = False) -> Response:
        if _wants_table(request):
            return JSONResponse(_table(request, kind, objects, revision or ""))
        return JSONResponse(objects[0].dump() if single else [o.dump() for o in objects])

    def _watch(self, request: Request, registry: Registry, prefix: str, kind: str,
               keep: Callable) -> AsyncIterator[bytes]:
        """Kubernetes watch: one JSON event per line. With no resourceVersion (or "0") the
        current objects come first as ADDED, as the Kubernetes API server does.

        The query is checked here, before the stream starts: once the 200 and the first
        bytes are out, a bad parameter can no longer be answered with a ``Status``."""
        as_table = _wants_table(request)
        if as_table:
            _include_object(request)
        timeout = _seconds(request.query_params.get("timeoutSeconds"), "timeoutSeconds") or None
        since = request.query_params.get("resourceVersion")
        start = None if since in (None, "", "0") else _revision(since)

        def line(event_type: str, obj) -> bytes:
            body = _table(request, kind, [obj], obj.metadata.resourceVersion or "") \
                if as_table else obj.dump()
            return json.dumps({"type": event_type, "object": body}).encode() + b"\n"

        async def events() -> AsyncIterator[bytes]:
            if start is None:
                objects, revision = await registry.list(prefix)
                for obj in objects:
                    if keep(obj):
                        yield line("ADDED", obj)
            else:
                revision = start
            try:
                async for event_type, obj in registry.watch(prefix, revision, keep):
                    yield line(event_type, obj)
            except Gone as err:
                code, body = status_body(err)
                yield json.dumps({"type": "ERROR", "object": body}).encode() + b"\n"

        return self._until(events(), timeout)

    @staticmethod
    async def _until(stream: AsyncIterator[bytes], timeout: float | None) -> AsyncIterator[bytes]:
        """Relay ``stream``, ending it after ``timeout`` seconds (the watch's timeoutSeconds).

        One task of its own drains ``stream`` into a queue, so ending early (timeout, client
        gone) cancels that task — the only one ever running the generator — instead of
        closing a generator another task is still inside."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        done = object()

        async def produce() -> None:
            try:
                async for chunk in stream:
                    await queue.put(chunk)
            finally:
                queue.put_nowait(done) if not queue.full() else None

        producer = asyncio.create_task(produce())
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if chunk is done:
                    if producer.done() and producer.exception():
                        raise producer.exception()
                    break
                yield chunk
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def close(self) -> None:
        await self._node_client.aclose()


def _namespace(name: str) -> dict:
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name},
            "status": {"phase": "Active"}}


def _wants_table(request: Request) -> bool:
    return TABLE_MEDIA in request.headers.get("accept", "")


def _include_object(request: Request) -> str:
    """What each Table row carries: ``includeObject`` = None, Metadata (default) or Object."""
    include = request.query_params.get("includeObject") or "Metadata"
    if include not in tables.INCLUDE_OBJECT:
        raise BadRequest(f'includeObject: Unsupported value: "{include}": supported values: '
                         + ", ".join(f'"{v}"' for v in tables.INCLUDE_OBJECT))
    return include


def _table(request: Request, kind: str, objects: list, resource_version: str) -> dict:
    return tables.table(kind, objects, resource_version=resource_version,
                        include_object=_include_object(request))


def _seconds(text: str | None, what: str) -> int:
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise BadRequest(f'{what}: Invalid value: "{text}": must be a whole number of seconds >= 0')
    return value


def _revision(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f'resourceVersion: Invalid value: "{text}": must be a revision number') from None


def _predicate(query) -> Callable[[object], bool]:
    by_label = label_selector(query.get("labelSelector"))
    by_field = field_selector(query.get("fieldSelector"))
    return lambda obj: by_label(obj) and by_field(obj)


async def _body(request: Request, default=None):
    raw = await request.body()
    if not raw.strip():
        if default is not None:
            return default
        raise BadRequest("the request has no body: send the object as JSON or YAML")
    try:
        if "yaml" in request.headers.get("content-type", ""):
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as err:
        raise BadRequest(f"the request body is not valid JSON or YAML: {err}") from None


def _handler(method: Callable) -> Callable:
    """Run a handler and turn every thingdoer error into a Kubernetes Status answer."""

    async def handle(request: Request) -> Response:
        try:
            return await method(request)
        except ThingdoerError as err:
            code, body = _status(err, request)
            return JSONResponse(body, status_code=code)
        except Exception as err:  # a bug: say so as a Status, log the traceback here
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                 "status": "Failure", "reason": "InternalError", "code": 500,
                                 "message": f"internal error: {type(err).__name__}: {err}"},
                                status_code=500)

    return handle


def _status(err: ThingdoerError, request: Request) -> tuple[int, dict]:
    """The ``Status`` answer for ``err``, with the details kubectl prints.

    As in Kubernetes, ``details`` names the resource ("pods") for most errors but the object's
    Kind and name for ``Invalid``, whose name is in the body on create, not in the URL: kubectl
    prints ``The Pod "x" is invalid: spec.containers[0].image: Required value``."""
    if isinstance(err, Invalid):
        return status_body(err, kind=err.kind, name=err.name or request.path_params.get("name", ""))
    kind = "pods" if "/pods" in request.url.path else "nodes" if "/nodes" in request.url.path else ""
    return status_body(err, kind=kind, name=request.path_params.get("name", ""))


def make_app(api: Api) -> Starlette:
    ns_pods = "/api/v1/namespaces/{namespace}/pods"
    routes = [
        Route("/version", _handler(api.version)),
        Route("/healthz", _handler(api.healthz)),
        Route("/api", _handler(api.api)),
        Route("/apis", _handler(api.apis)),
        Route("/api/v1", _handler(api.core_v1)),
        Route("/openapi/v3", _handler(api.openapi)),
        Route("/openapi/v3/api/v1", _handler(api.openapi_v1)),
        Route("/api/v1/namespaces", _handler(api.namespaces)),
        Route("/api/v1/namespaces/{namespace}", _handler(api.namespace)),
        Route("/api/v1/pods", _handler(api.list_pods)),
        Route(ns_pods, _handler(api.list_pods), methods=["GET"]),
        Route(ns_pods, _handler(api.create_pod), methods=["POST"]),
        Route(ns_pods + "/{name}", _handler(api.get_pod), methods=["GET"]),
        Route(ns_pods + "/{name}", _handler(api.delete_pod), methods=["DELETE"]),
        Route(ns_pods + "/{name}/status", _handler(api.get_pod), methods=["GET"]),
        Route(ns_pods + "/{name}/log", _handler(api.pod_log), methods=["GET"]),
        Route(ns_pods + "/{name}/exec", _handler(api.pod_exec), methods=["POST"]),
        WebSocketRoute(ns_pods + "/{name}/exec", api.pod_exec_websocket),
        Route("/api/v1/nodes", _handler(api.list_nodes), methods=["GET"]),
        Route("/api/v1/nodes/{name}", _handler(api.get_node), methods=["GET"]),
        Route("/api/v1/nodes/{name}", _handler(api.delete_node), methods=["DELETE"]),
    ]
    routes += metrics.routes(api, _handler)  # metrics.k8s.io and the node stats proxy
    return Starlette(routes=routes)


async def serve(store: Store, keys: Keys, host: str, port: int,
                started: asyncio.Event | None = None) -> None:
    """Serve apid until cancelled. ``started`` is set once the socket listens."""
    api = Api(store, keys)
    try:
        await serve_http(make_app(api), host, port, "apid", started)
    finally:
        await api.close()
