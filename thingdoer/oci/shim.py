"""The per-container supervisor (the C shim, ``native/runc_shim.c``) and the files it leaves.

The contract (``native/README.md`` holds the whole protocol):

    <bundle>/shim.pid   "<pid> <start time>" of the shim (start time: field 22 of
                        /proc/<pid>/stat), written atomically by the shim before the runtime runs
    <bundle>/pid        pid of the container's init, written by the runtime (``run --detach``)
    <bundle>/exit       "<code>" or "<128+N> <N>" for a death by signal N, written atomically by
                        the shim once the init is gone and the runtime's container deleted;
                        after a failed start: the runtime's exit status
    <bundle>/container.log[.1 ...]   stdout/stderr in CRI format, ``<RFC3339Nano> stdout|stderr
                        F|P <text>``, rotated at a size limit; on a failed start, the runtime's
                        own error text as stderr records

The shim is spawned with ``posix_spawn`` (the agent holds gRPC channels: no ``fork`` of the
Python process), forks once more and leaves its spawner: it runs in a session of its own as
child subreaper, nobody's child but init's, and nobody signals it, so containers outlive the
agent. It reports one JSON line on the sync fd: ``{"pid": N}`` once the container runs, or
``{"pid": -1, "error": "<the runtime's words>"}``. The agent stops a container through the
runtime (``runc kill``), never through the shim. Because every fact is a file, an agent that
restarts learns what happened while it was away by reading them (``observe``) and waits for a
live shim it did not start (``wait``, through a pidfd).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import Unavailable
from .runc import Runtime, _runc_message

SHIM_PID, INIT_PID, EXIT, LOG, SHIM_ERR = "shim.pid", "pid", "exit", "container.log", "shim.err"
LOG_MAX_SIZE = 10 * 1024 * 1024  # bytes; as the kubelet's containerLogMaxSize
LOG_MAX_FILES = 5  # the live file and four rotated ones; as containerLogMaxFiles
SYNC_TIMEOUT = 60.0  # seconds for the runtime to create and start a container: a hang guard
BINARY = Path(__file__).resolve().parent / "_bin" / "runc_shim"  # built by setup.py


@dataclass(frozen=True)
class ShimFiles:
    """What the bundle dir says about one container."""

    created: bool  # the runtime wrote the init pid: the process was started
    started_at: str | None
    exited: bool
    exit_code: int | None
    finished_at: str | None
    supervisor_alive: bool
    start_error: str = ""  # the runtime's words when it exited without creating the init
    signal: int | None = None  # the signal that ended the init


@dataclass(frozen=True)
class Started:
    """The shim's report: the container's init pid, or the runtime's error text."""

    pid: int | None
    error: str = ""


def binary() -> Path:
    path = Path(os.environ.get("THINGDOER_SHIM", BINARY))
    if not os.access(path, os.X_OK):
        raise Unavailable(f"the container shim {path} is missing: it is built when thingdoer is "
                          "installed (pip install -e . with gcc present), or set THINGDOER_SHIM")
    return path


def spawn(runtime: Runtime, container_id: str, bundle: Path, *, log_max_size: int = LOG_MAX_SIZE,
          log_max_files: int = LOG_MAX_FILES) -> Started:
    """Start the shim for the container in ``bundle`` and wait for its report."""
    pid_file = bundle / INIT_PID
    argv = [str(binary()), "--bundle", str(bundle), "--log", str(bundle / LOG),
            "--pid-file", str(pid_file), "--log-max-size", str(log_max_size),
            "--log-max-files", str(log_max_files), "--sync-fd", "3",
            "--", *runtime.run_detached_argv(container_id, bundle, pid_file),
            "--", *runtime.delete_argv(container_id)]
    read_end, write_end = os.pipe()
    try:
        err_fd = os.open(bundle / SHIM_ERR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err_fd, 2),
                (os.POSIX_SPAWN_DUP2, write_end, 3)])  # glibc clears CLOEXEC on the copy
        finally:
            os.close(err_fd)
        os.close(write_end)
        write_end = -1
        os.waitpid(pid, 0)  # the first process leaves at once; the shim proper runs on
        report = _read_report(read_end)
    except OSError as err:
        raise Unavailable(f"starting the shim for {container_id}: {err}") from err
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if report is None:
        detail = _read(bundle / SHIM_ERR) or "no report on its sync fd"
        raise Unavailable(f"the shim for {container_id} failed: {detail}")
    if report.get("pid", -1) > 0:
        return Started(pid=report["pid"])
    return Started(pid=None, error=_runc_message(report.get("error", "")) or "the runtime failed")


def _read_report(fd: int) -> dict | None:
    """The one JSON line the shim writes on the sync fd (None if it closed it without)."""
    data, deadline = b"", time.monotonic() + SYNC_TIMEOUT
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise OSError(f"no report from the shim within {SYNC_TIMEOUT:g}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        # The runtime's words are passed through as bytes: not necessarily UTF-8.
        return json.loads(data.decode(errors="replace")) if data.strip() else None
    except ValueError:
        return None


def supervisor_pid(bundle: Path) -> int | None:
    """The shim's pid if it is still running *and* is this bundle's.

    A process is known by its pid *and* its start time (pids get reused); an exited one that
    is not yet reaped (a zombie) counts as gone."""
    try:
        pid_text, _, started = (bundle / SHIM_PID).read_text().partition(" ")
        pid = int(pid_text)
        state, start_time = _process(pid)
    except (OSError, ValueError):
        return None
    return pid if state != "Z" and start_time == started.strip() else None


def _process(pid: int) -> tuple[str, str]:
    """(state letter, start time in clock ticks since boot) from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    return fields[0], fields[19]


async def wait(bundle: Path) -> None:
    """Return once the shim of ``bundle`` has exited (at once if it already has)."""
    pid = supervisor_pid(bundle)
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        if supervisor_pid(bundle) is not None:  # the pid may have been reused in between
            await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def wait_gone(bundle: Path, timeout: float) -> bool:
    """Block (briefly: after the container was killed) until the shim has exited."""
    return _wait(lambda: supervisor_pid(bundle) is None, timeout)


def wait_settled(bundle: Path, timeout: float) -> bool:
    """Block until the runtime has created the container or given up (or the shim is gone):
    a container being created cannot be deleted yet — it would come up afterwards."""
    return _wait(lambda: (bundle / INIT_PID).exists() or (bundle / EXIT).exists()
                 or supervisor_pid(bundle) is None, timeout)


def _wait(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def observe(bundle: Path) -> ShimFiles:
    # The files appear in the order shim.pid, pid, exit, then the shim ends; so they are
    # looked at in the reverse order, each once: whatever is seen later is at least as new.
    # (Another order races: e.g. no exit file yet, then the shim writes it and exits, and it
    # looks as if it died without a status.)
    alive = supervisor_pid(bundle) is not None
    finished_at = _mtime(bundle / EXIT)
    started_at = _mtime(bundle / INIT_PID)
    exit_code = signal = None
    if finished_at is not None:  # the exit file is only ever renamed into place, complete
        exit_code, signal = parse_exit(_read(bundle / EXIT))
    return ShimFiles(
        created=started_at is not None, started_at=started_at, exited=finished_at is not None,
        exit_code=exit_code, finished_at=finished_at, supervisor_alive=alive,
        start_error=start_error(bundle / LOG) if finished_at and not started_at else "",
        signal=signal)


def parse_exit(text: str) -> tuple[int | None, int | None]:
    """(code, signal) from the exit file: ``"3"`` → (3, None), ``"137 9"`` → (137, 9)."""
    try:
        fields = [int(f) for f in text.split()]
    except ValueError:
        return None, None
    return (fields[0] if fields else None), (fields[1] if len(fields) > 1 else None)


def parse_record(line: bytes) -> tuple[str, str, bool, bytes] | None:
    """A CRI log record ``<time> <stream> <F|P> <text>`` → (time, stream, full line?, text);
    None for anything else."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    return parts[0].decode(), parts[1].decode(), parts[2] == b"F", parts[3] if len(parts) > 3 else b""


def start_error(log: Path, limit: int = 8192) -> str:
    """The runtime's words from the log of a container it failed to start."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            lines = f.read().splitlines()
    except OSError:
        return ""
    text = b"\n".join(r[3] for r in map(parse_record, lines) if r).decode(errors="replace")
    return _runc_message(text) or text.strip().splitlines()[-1] if text.strip() else ""


def _mtime(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
