"""Reading a container's log file: the last N lines, and following it as it grows (pure I/O).

The file holds the container's stdout and stderr as written. Following ends once the
container has exited and everything it wrote has been read.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator, Callable

CHUNK = 64 * 1024


def tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the last ``lines`` lines of ``path`` begin."""
    size = path.stat().st_size
    if lines <= 0:
        return size
    with open(path, "rb") as f:
        position, newlines = size, 0
        # A final newline ends the last line rather than starting a new one.
        if size:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                position -= 1
        while position > 0:
            step = min(CHUNK, position)
            position -= step
            f.seek(position)
            block = f.read(step)
            for i in range(len(block) - 1, -1, -1):
                if block[i] == 10:
                    newlines += 1
                    if newlines == lines:
                        return position + i + 1
    return 0


async def read_log(path: Path, *, tail_lines: int | None, follow: bool,
                   finished: Callable[[], bool], poll: float = 0.05) -> AsyncIterator[bytes]:
    offset = tail_offset(path, tail_lines) if tail_lines is not None else 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        while True:
            chunk = os.read(fd, CHUNK)
            if chunk:
                yield chunk
                continue
            if not follow or finished():
                # One more read: the container may have written between the two checks.
                rest = os.read(fd, CHUNK)
                while rest:
                    yield rest
                    rest = os.read(fd, CHUNK)
                return
            await asyncio.sleep(poll)
    finally:
        os.close(fd)
