"""The agent's node-local HTTP API: what apid proxies for things that live on the node.

    GET /healthz
    GET /containerLogs/{namespace}/{pod}/{container}?follow=true&tailLines=N   (as the kubelet)
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..serving import serve_http
from .agent import Agent
from .logs import read_log
from .observed import EXITED


def make_app(agent: Agent) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def container_logs(request: Request) -> Response:
        p = request.path_params
        pod = next((pod for pod in agent.mine().values()
                    if pod.key == (p["namespace"], p["pod"])), None)
        if pod is None:
            return PlainTextResponse(f'pod "{p["pod"]}" is not on node {agent.name}', status_code=404)
        uid, name = pod.metadata.uid, p["container"]
        path = agent.containers.log_path(uid, name)
        if not path.exists():
            return PlainTextResponse(f'container "{name}" in pod "{p["pod"]}" is waiting to start',
                                     status_code=404)
        query = request.query_params
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
        except ValueError:
            return PlainTextResponse("tailLines must be a whole number", status_code=400)

        def finished() -> bool:
            obs = agent.containers.observe(uid, name)
            return obs is None or obs.state == EXITED

        stream = read_log(path, tail_lines=tail, follow=query.get("follow") in ("true", "1"),
                          finished=finished)
        return StreamingResponse(stream, media_type="text/plain")

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/containerLogs/{namespace}/{pod}/{container}", container_logs),
    ])


async def serve(agent: Agent, started: asyncio.Event | None = None) -> None:
    await serve_http(make_app(agent), agent.config.address, agent.config.port, "workerd", started)
