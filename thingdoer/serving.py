"""Running an ASGI app with uvicorn inside an event loop the caller owns (apid, workerd)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn


async def serve_http(app, host: str, port: int, what: str,
                     started: asyncio.Event | None = None) -> None:
    """Serve ``app`` until cancelled; ``started`` is set once the socket listens.

    Raises ``OSError`` naming ``what`` and the address when it cannot listen."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # the caller owns signals
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"{what} could not listen on {host}:{port} (is the port in use?)")
            await asyncio.sleep(0.01)
        if started is not None:
            started.set()
        await task
    finally:
        server.should_exit = True
        if not task.done():
            await asyncio.wait([task], timeout=2)
