"""Exec in a running container: ``runc exec`` (through ``oci/runc.py``), its stdout and stderr
streamed as frames (``models/streams.py``) as they come, then the exit status.

The process belongs to its caller: if the caller goes away (the HTTP stream is closed), the
exec'd process is killed. No stdin and no TTY (not done yet).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..models import streams
from ..oci.runc import Runtime

CHUNK = 32 * 1024


async def run(runtime: Runtime, container_id: str, argv: list[str]) -> AsyncIterator[bytes]:
    proc = await runtime.exec(container_id, argv)
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def pump(reader: asyncio.StreamReader, channel: int) -> None:
        while chunk := await reader.read(CHUNK):
            await queue.put((channel, chunk))

    pumps = [asyncio.create_task(pump(proc.stdout, streams.STDOUT)),
             asyncio.create_task(pump(proc.stderr, streams.STDERR))]
    both = asyncio.gather(*pumps)
    try:
        while not (both.done() and queue.empty()):
            getter = asyncio.create_task(queue.get())
            await asyncio.wait([getter, both], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield streams.frame(*getter.result())
            else:
                getter.cancel()
        yield streams.exit_status(await proc.wait())
    finally:
        if proc.returncode is None:  # the caller left: the process goes with it
            proc.kill()
            await proc.wait()
        for task in pumps:
            task.cancel()
