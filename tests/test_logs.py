"""Reading CRI-format container logs (``node/logs.py``): decoding, tail, since, timestamps, and
following a log while it is rotated under the reader. Files are written here in the shim's
record format; the shim's own writing and rotation are tested with real containers in
test_shim.py."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from thingdoer.node.logs import read_log, rfc3339nano, rotated

T0 = "2026-01-02T03:04:05.000000001Z"
T1 = "2026-01-02T03:04:06.000000001Z"
T2 = "2026-01-02T03:04:07.500000000Z"


def record(text: str, stream: str = "stdout", tag: str = "F", stamp: str = T1) -> bytes:
    return f"{stamp} {stream} {tag} {text}\n".encode()


async def collect(path: Path, **kwargs) -> bytes:
    return b"".join([chunk async for chunk in read_log(path, **kwargs)])


def read(path: Path, **kwargs) -> bytes:
    return asyncio.run(asyncio.wait_for(collect(path, **kwargs), 10))


def test_records_become_lines_and_partial_records_join_the_next(tmp_path):
    """F records end a line, P records continue it; stdout and stderr interleave as written."""
    log = tmp_path / "container.log"
    log.write_bytes(record("one") + record("tw", tag="P") + record("o") + record("oops", "stderr")
                    + record("", tag="F"))
    assert read(log) == b"one\ntwo\noops\n\n"


def test_timestamps_prefix_each_line_with_its_first_records_time(tmp_path):
    log = tmp_path / "container.log"
    log.write_bytes(record("a", stamp=T0) + record("b", tag="P", stamp=T1) + record("c", stamp=T2))
    assert read(log, timestamps=True) == f"{T0} a\n{T1} bc\n".encode()


def test_since_drops_earlier_lines(tmp_path):
    log = tmp_path / "container.log"
    log.write_bytes(record("old", stamp=T0) + record("new", stamp=T2))
    since = datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc)
    assert read(log, since=since) == b"new\n"
    assert rfc3339nano(since) == "2026-01-02T03:04:06.000000000Z"


def test_lines_that_are_not_records_are_skipped(tmp_path):
    log = tmp_path / "container.log"
    log.write_bytes(b"garbage\n" + record("kept"))
    assert read(log) == b"kept\n"


def rotated_set(tmp_path: Path, files: int, per_file: int) -> tuple[Path, list[str]]:
    """A log rotated ``files - 1`` times: ``.N`` oldest … ``.1``, then the live file."""
    log, lines, n = tmp_path / "container.log", [], 0
    for index in range(files - 1, -1, -1):
        path = log if index == 0 else log.with_name(f"{log.name}.{index}")
        chunk = []
        for _ in range(per_file):
            chunk.append(f"line {n}")
            n += 1
        path.write_bytes(b"".join(record(t) for t in chunk))
        lines += chunk
    return log, lines


def test_the_whole_log_spans_every_rotated_file_oldest_first(tmp_path):
    log, lines = rotated_set(tmp_path, files=4, per_file=3)
    assert [p.name for p in rotated(log)] == ["container.log.3", "container.log.2",
                                              "container.log.1", "container.log"]
    assert read(log) == "".join(f"{t}\n" for t in lines).encode()


@pytest.mark.parametrize("tail", [0, 1, 3, 4, 7, 12, 50])
def test_tail_reaches_back_across_rotated_files(tmp_path, tail):
    log, lines = rotated_set(tmp_path, files=4, per_file=3)
    expected = lines[-tail:] if tail else []
    assert read(log, tail_lines=tail) == "".join(f"{t}\n" for t in expected).encode()


def test_following_keeps_reading_across_rotation(tmp_path):
    """A follower sees every line exactly once while the writer rotates the file under it
    (renames, as the shim does) several times, and ends once the container is finished."""
    log = tmp_path / "container.log"
    log.write_bytes(b"")
    done = False
    total = 300

    async def writer() -> None:
        nonlocal done
        f = open(log, "ab", buffering=0)
        for i in range(total):
            if i and i % 70 == 0:  # rotate: .1 -> .2, live -> .1, a new live file
                f.close()
                if log.with_name("container.log.1").exists():
                    os.replace(log.with_name("container.log.1"), log.with_name("container.log.2"))
                os.replace(log, log.with_name("container.log.1"))
                f = open(log, "ab", buffering=0)
            f.write(record(f"n{i}"))
            if i % 10 == 0:
                await asyncio.sleep(0.001)
        f.close()
        done = True

    async def main() -> bytes:
        follower = asyncio.create_task(collect(log, follow=True, finished=lambda: done, poll=0.001))
        await writer()
        return await asyncio.wait_for(follower, 10)

    assert asyncio.run(main()) == "".join(f"n{i}\n" for i in range(total)).encode()


def test_follow_ends_when_finished(tmp_path):
    log = tmp_path / "container.log"
    log.write_bytes(record("done"))
    assert read(log, follow=True, finished=lambda: True) == b"done\n"
