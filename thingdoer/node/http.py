"""The agent's node-local HTTP API: what apid proxies for things that live on the node.

    GET /healthz
    GET /containerLogs/{namespace}/{pod}/{container}   (as the kubelet) ?follow=true,
        tailLines=N, sinceSeconds=N, sinceTime=RFC3339, timestamps=true, previous=true
    POST /exec/{namespace}/{pod}/{container}?command=A&command=B   stdout/stderr frames, then
        the exit Status (``node/exec.py``, ``models/streams.py``)
    GET /stats     usage of the node, its pods and containers as JSON (``stats.py``)
    GET /metrics   the same as Prometheus text with cAdvisor's metric names
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..models.streams import MEDIA_TYPE as EXEC_MEDIA
from ..serving import serve_http
from .agent import Agent
from .exec import run as exec_run
from .logs import log_options, read_log
from .observed import EXITED, RUNNING_STATE
from .stats import prometheus


def make_app(agent: Agent) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def stats(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(agent.stats.collect))

    async def metrics(request: Request) -> Response:
        text = prometheus(await asyncio.to_thread(agent.stats.collect))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    def find_pod(p: dict):
        return next((pod for pod in agent.mine().values()
                     if pod.key == (p["namespace"], p["pod"])), None)

    async def container_logs(request: Request) -> Response:
        p = request.path_params
        pod = find_pod(p)
        if pod is None:
            return PlainTextResponse(f'pod "{p["pod"]}" is not on node {agent.name}', status_code=404)
        uid, name = pod.metadata.uid, p["container"]
        try:
            options = log_options(request.query_params)
        except ValueError as err:
            return PlainTextResponse(str(err), status_code=400)
        previous = options.pop("previous")
        path = (agent.containers.previous_log_path if previous else agent.containers.log_path)(uid, name)
        if not path.exists():
            message = (f'previous terminated container "{name}" in pod "{p["pod"]}" not found'
                       if previous else f'container "{name}" in pod "{p["pod"]}" is waiting to start')
            return PlainTextResponse(message, status_code=404)

        def finished() -> bool:
            obs = agent.containers.observe(uid, name)
            return previous or obs is None or obs.state == EXITED

        stream = read_log(path, finished=finished, **options)
        return StreamingResponse(stream, media_type="text/plain")

    async def container_exec(request: Request) -> Response:
        p = request.path_params
        pod = find_pod(p)
        if pod is None:
            return PlainTextResponse(f'pod "{p["pod"]}" is not on node {agent.name}', status_code=404)
        command = request.query_params.getlist("command")
        if not command:
            return PlainTextResponse("give the command to run as command=... (one per argument)",
                                     status_code=400)
        uid, name = pod.metadata.uid, p["container"]
        obs = agent.containers.observe(uid, name)
        if obs is None or obs.state != RUNNING_STATE:
            return PlainTextResponse(f'container "{name}" in pod "{p["pod"]}" is not running: '
                                     "exec needs a running container", status_code=409)
        stream = exec_run(agent.containers.runtime, agent.containers.container_id(uid, name), command)
        return StreamingResponse(stream, media_type=EXEC_MEDIA)

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/stats", stats),
        Route("/metrics", metrics),
        Route("/containerLogs/{namespace}/{pod}/{container}", container_logs),
        Route("/exec/{namespace}/{pod}/{container}", container_exec, methods=["POST"]),
    ])


async def serve(agent: Agent, started: asyncio.Event | None = None) -> None:
    await serve_http(make_app(agent), agent.config.address, agent.config.port, "workerd", started)
