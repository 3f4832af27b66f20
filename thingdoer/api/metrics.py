"""apid's ``metrics.k8s.io/v1beta1`` subset (what ``kubectl top pods|nodes`` reads), and a
proxy to each node agent's ``/stats`` and ``/metrics``.

The figures live on the nodes: apid asks each Ready node's agent for ``/stats`` over HTTP
(the address and port the Node publishes) and reshapes the answer; it never reads cgroups
itself (the control plane never touches a host). A node that does not answer is left out of
a list and is ``Unavailable`` for a get.

    GET /apis/metrics.k8s.io/v1beta1                                   discovery
    GET /apis/metrics.k8s.io/v1beta1/nodes[/{name}]                    NodeMetrics
    GET /apis/metrics.k8s.io/v1beta1/pods                              PodMetrics, all namespaces
    GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods[/{name}]     PodMetrics
    GET /api/v1/nodes/{name}/proxy/stats | /proxy/metrics              the agent's own answer
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Callable

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import NotFound, Unavailable
from ..models import Node

log = logging.getLogger(__name__)

GROUP, VERSION = "metrics.k8s.io", "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
BASE = f"/apis/{GROUP_VERSION}"
WINDOW = "10s"  # the agent samples cpu counters every 10 s (node/stats.py)

API_GROUP = {"name": GROUP, "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
             "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION}}


def resources() -> dict:
    def res(name: str, kind: str, namespaced: bool) -> dict:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": ["get", "list"]}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
            "resources": [res("nodes", "NodeMetrics", False), res("pods", "PodMetrics", True)]}


# -- shaping (pure) ----------------------------------------------------------------------------

def cpu_quantity(cores: float | None) -> str:
    return f"{int((cores or 0) * 1e9)}n"


def memory_quantity(nbytes: int | None) -> str:
    return f"{(nbytes or 0) // 1024}Ki"


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_metrics(stats: dict) -> dict:
    node = stats["node"]
    return {"kind": "NodeMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": node["name"], "creationTimestamp": _stamp(stats["timestamp"])},
            "timestamp": _stamp(stats["timestamp"]), "window": WINDOW,
            "usage": {"cpu": cpu_quantity(node.get("cpu_usage_cores")),
                      "memory": memory_quantity(node.get("memory_working_set"))}}


def pod_metrics(stats: dict) -> list[dict]:
    out = []
    for pod in stats["pods"]:
        out.append({
            "kind": "PodMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": pod["name"], "namespace": pod["namespace"],
                         "creationTimestamp": _stamp(stats["timestamp"])},
            "timestamp": _stamp(stats["timestamp"]), "window": WINDOW,
            "containers": [{"name": c["name"],
                            "usage": {"cpu": cpu_quantity(c["usage"].get("cpu_usage_cores")),
                                      "memory": memory_quantity(c["usage"].get("memory_working_set"))}}
                           for c in pod["containers"]]})
    return out


def _list(kind: str, items: list[dict]) -> dict:
    return {"kind": kind, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}


# -- fetching from the agents ------------------------------------------------------------------

class Metrics:
    def __init__(self, api):
        self.api = api  # server.Api: its registries and its HTTP client for node agents

    def _url(self, node: Node, path: str) -> str:
        return node.agent_url() + path

    async def _fetch(self, node: Node, path: str = "/stats") -> httpx.Response:
        url = self._url(node, path)
        try:
            answer = await self.api._node_client.get(url, timeout=10.0)
        except httpx.HTTPError as err:
            raise Unavailable(f"cannot reach the node agent of {node.metadata.name} at {url}: {err}") from err
        if answer.status_code != 200:
            raise Unavailable(f"node agent of {node.metadata.name} answered {answer.status_code} for {path}")
        return answer

    async def _all_stats(self) -> list[dict]:
        nodes, _ = await self.api.nodes.list()
        ready = [n for n in nodes if n.ready]
        answers = await asyncio.gather(*(self._fetch(n) for n in ready), return_exceptions=True)
        out = []
        for node, answer in zip(ready, answers):
            if isinstance(answer, Exception):
                log.warning("metrics: leaving out node %s: %s", node.metadata.name, answer)
            else:
                out.append(answer.json())
        return out

    async def nodes(self, request: Request) -> Response:
        name = request.path_params.get("name")
        if name:
            return JSONResponse(node_metrics((await self._fetch(await self.api.nodes.get(name))).json()))
        return JSONResponse(_list("NodeMetricsList", [node_metrics(s) for s in await self._all_stats()]))

    async def pods(self, request: Request) -> Response:
        namespace, name = request.path_params.get("namespace"), request.path_params.get("name")
        if name:
            pod = await self.api.pods.get(namespace, name)
            if not pod.spec.nodeName:
                raise NotFound(f'podmetrics "{name}" not found: the pod is not scheduled yet')
            stats = (await self._fetch(await self.api.nodes.get(pod.spec.nodeName))).json()
            found = [m for m in pod_metrics(stats) if m["metadata"]["namespace"] == namespace
                     and m["metadata"]["name"] == name]
            if not found:
                raise NotFound(f'podmetrics "{name}" not found: its cgroup is not there (yet)')
            return JSONResponse(found[0])
        items = [m for s in await self._all_stats() for m in pod_metrics(s)
                 if namespace is None or m["metadata"]["namespace"] == namespace]
        return JSONResponse(_list("PodMetricsList", items))

    async def proxy(self, request: Request) -> Response:
        node = await self.api.nodes.get(request.path_params["name"])
        path = request.path_params["path"]
        if path not in ("stats", "metrics"):
            raise NotFound(f"the node proxy serves only stats and metrics, not {path!r}")
        answer = await self._fetch(node, f"/{path}")
        if path == "stats":
            return JSONResponse(answer.json())
        return PlainTextResponse(answer.text, media_type=answer.headers.get("content-type"))

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(resources())


def routes(api, handler: Callable) -> list[Route]:
    m = Metrics(api)
    return [
        Route(BASE, handler(m.discovery)),
        Route(BASE + "/nodes", handler(m.nodes)),
        Route(BASE + "/nodes/{name}", handler(m.nodes)),
        Route(BASE + "/pods", handler(m.pods)),
        Route(BASE + "/namespaces/{namespace}/pods", handler(m.pods)),
        Route(BASE + "/namespaces/{namespace}/pods/{name}", handler(m.pods)),
        Route("/api/v1/nodes/{name}/proxy/{path}", handler(m.proxy)),
    ]
