"""Reading a container's CRI-format logs: whole, the last N lines, since a time, following them
as they grow and across rotation (I/O over files; the record format is ``oci/shim.py``'s).

The shim writes ``<RFC3339Nano> stdout|stderr F|P <text>`` records to ``container.log`` and
rotates it by renaming (``.1`` is the newest old file, ``.N`` the oldest). A reader opens every
file of the set oldest first, holding each open, so a rotation while it reads loses nothing:
it reads the file it holds to its end, then moves on to the newer one (for the live file:
when the name now points at another inode). Following ends once the container has exited and
everything it wrote has been read.

Output is what kubelet serves: the text of each record, a ``P`` (partial) record joined to the
next without a newline; with ``timestamps`` each line starts with its first record's time.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

from ..oci.shim import parse_record

CHUNK = 64 * 1024


def rotated(path: Path) -> list[Path]:
    """The files of one log, oldest first: ``path.N`` … ``path.1``, ``path``."""
    olds = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1:]
        if suffix.isdigit():
            olds.append((int(suffix), candidate))
    return [p for _, p in sorted(olds, reverse=True)] + ([path] if path.exists() else [])


def tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the last ``lines`` lines (records) of ``path`` begin."""
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


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(CHUNK), b""))


def log_options(query) -> dict:
    """``read_log`` keywords (and ``previous``) from kubelet's query parameters; ValueError
    naming the parameter and the fix."""
    def flag(name: str) -> bool:
        return query.get(name, "false").lower() in ("true", "1")

    def number(name: str) -> int | None:
        if name not in query:
            return None
        try:
            value = int(query[name])
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{name}={query[name]!r}: must be a whole number, 0 or more")
        return value

    since = None
    if (seconds := number("sinceSeconds")) is not None:
        since = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    if "sinceTime" in query:
        try:
            since = datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"sinceTime={query['sinceTime']!r}: use RFC 3339, "
                             "e.g. 2026-01-02T03:04:05Z") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    return {"tail_lines": number("tailLines"), "follow": flag("follow"), "since": since,
            "timestamps": flag("timestamps"), "previous": flag("previous")}


def rfc3339nano(when: datetime) -> str:
    """The shim's time format, so that record times compare as strings."""
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond * 1000:09d}Z"


class _Decoder:
    """Records in, kubelet's output out."""

    def __init__(self, timestamps: bool, since: str | None):
        self.timestamps, self.since = timestamps, since
        self.rest = b""  # an incomplete record at the end of what was read so far
        self.mid_line = False  # the last record was P: the next continues its line

    def feed(self, data: bytes) -> bytes:
        self.rest += data
        lines = self.rest.split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            record = parse_record(line)
            if record is None:
                continue
            stamp, _, full, text = record
            if self.since and stamp < self.since and not self.mid_line:
                continue
            if self.timestamps and not self.mid_line:
                out.append(stamp.encode() + b" ")
            out.append(text + b"\n" if full else text)
            self.mid_line = not full
        return b"".join(out)


async def read_log(path: Path, *, tail_lines: int | None = None, follow: bool = False,
                   finished: Callable[[], bool] = lambda: True, since: datetime | None = None,
                   timestamps: bool = False, poll: float = 0.05) -> AsyncIterator[bytes]:
    """The container's output from the log ``path`` (and its rotated files)."""
    decoder = _Decoder(timestamps, rfc3339nano(since) if since else None)
    files = rotated(path)
    starts = [0] * len(files)
    if tail_lines is not None:  # skip whole old files, then start inside the first one needed
        wanted, first = tail_lines, len(files)
        while first > 0 and wanted > 0:
            first -= 1
            count = _count_lines(files[first])
            if count < wanted and first > 0:
                wanted -= count
                continue
            starts[first] = tail_offset(files[first], wanted)
            break
        files, starts = files[first:], starts[first:]
    fds = []
    try:
        for file in files:
            try:
                fds.append(os.open(file, os.O_RDONLY))
            except FileNotFoundError:  # rotated away between the listing and now
                fds.append(-1)
        for fd, start in zip(fds[:-1], starts[:-1]):
            if fd >= 0:
                os.lseek(fd, start, os.SEEK_SET)
                while chunk := os.read(fd, CHUNK):
                    if out := decoder.feed(chunk):
                        yield out
        if not fds:
            return
        fd = fds[-1]
        if fd >= 0:
            os.lseek(fd, starts[-1], os.SEEK_SET)
        while True:
            chunk = os.read(fd, CHUNK) if fd >= 0 else b""
            if chunk:
                if out := decoder.feed(chunk):
                    yield out
                continue
            if _replaced(path, fd):  # rotated: what we hold is complete, the name is newer
                try:
                    new = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    new = -1
                fds.append(new)
                fd = new
                continue
            if not follow:
                return
            if finished():
                # One more read: the container may have written between the two checks.
                while chunk := (os.read(fd, CHUNK) if fd >= 0 else b""):
                    if out := decoder.feed(chunk):
                        yield out
                if not _replaced(path, fd):
                    return
                continue
            await asyncio.sleep(poll)
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _replaced(path: Path, fd: int) -> bool:
    """Whether ``path`` now names another file than ``fd`` (it was rotated away)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if fd < 0:
        return True
    held = os.fstat(fd)
    return (st.st_ino, st.st_dev) != (held.st_ino, held.st_dev)
