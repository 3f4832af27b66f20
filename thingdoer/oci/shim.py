"""The per-container supervisor and the files it leaves in the bundle dir.

The contract (what ``native/README.md`` will hold for the C shim of issue 3, which replaces the
``/bin/sh`` supervisor used here without changing any of it):

    <bundle>/shim.pid   "<pid> <start time>" of the supervisor (start time: field 22 of
                        /proc/<pid>/stat), written by the agent right after spawning it
    <bundle>/pid        pid of the container's init, written by the runtime once it exists
    <bundle>/exit       the container's exit status in decimal (128+N for a death by signal
                        N), written atomically (tmp + rename) when the runtime returns
    <bundle>/container.log   the container's stdout and stderr, and the runtime's own errors

The supervisor runs in a session of its own and nobody signals it, so containers outlive the
agent; the agent stops a container through the runtime (``runc kill``), never through the
supervisor. Because every fact is a file, an agent that restarts learns what happened while it
was away by reading them (``observe``) and waits for a live supervisor it did not start
(``wait``, through a pidfd).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import Unavailable
from .runc import Runtime

SHIM_PID, INIT_PID, EXIT, LOG = "shim.pid", "pid", "exit", "container.log"

# $1 = exit file, the rest = the runtime's argv. `"$@"` keeps the runtime a child of the
# supervisor (not exec'd), so the supervisor outlives it and can record its status. The final
# `exit` keeps dash from exec'ing `mv` as its last command: the supervisor's command line (how
# ``supervisor_pid`` recognises it) must not change while it runs.
_SUPERVISOR = ('exit_file=$1; shift; "$@"; status=$?; '
               'printf "%d\\n" "$status" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"; '
               'exit 0')


@dataclass(frozen=True)
class ShimFiles:
    """What the bundle dir says about one container."""

    created: bool  # the runtime wrote the init pid: the process was started
    started_at: str | None
    exited: bool
    exit_code: int | None
    finished_at: str | None
    supervisor_alive: bool
    last_log_line: str = ""


def spawn(runtime: Runtime, container_id: str, bundle: Path) -> int:
    """Start the supervisor for the container in ``bundle``; returns its pid."""
    argv = runtime.run_argv(container_id, bundle, bundle / INIT_PID)
    log_fd = os.open(bundle / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", _SUPERVISOR, "thingdoer-shim", str(bundle / EXIT),
                                 *argv], stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, close_fds=True)
    except OSError as err:
        raise Unavailable(f"starting the supervisor for {container_id}: {err}") from err
    finally:
        os.close(log_fd)
    _write_atomic(bundle / SHIM_PID, f"{proc.pid} {_process(proc.pid)[1]}\n")
    proc.returncode = 0  # we reap it through its pidfd (``wait``); keep Popen from doing so
    return proc.pid


def supervisor_pid(bundle: Path) -> int | None:
    """The supervisor's pid if it is still running *and* is this bundle's.

    A process is known by its pid *and* its start time (pids get reused); an exited one that
    is not yet reaped (a zombie) counts as gone. (Not by its command line: that reads empty
    for a moment while the supervisor is being exec'd, and would look like a death.)"""
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
    """Return once the supervisor of ``bundle`` has exited (at once if it already has)."""
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
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    try:  # reap it if it is our child; a supervisor we adopted is reaped by init
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(bundle: Path, timeout: float) -> bool:
    """Block (briefly: after the container was killed) until the supervisor has exited."""
    return _wait(lambda: supervisor_pid(bundle) is None, timeout)


def wait_settled(bundle: Path, timeout: float) -> bool:
    """Block until the runtime has created the container or given up (or the supervisor is
    gone): a container being created cannot be deleted yet — it would come up afterwards."""
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
    # The files appear in the order shim.pid, pid, exit, then the supervisor ends; so they are
    # looked at in the reverse order, each once: whatever is seen later is at least as new.
    # (Another order races: e.g. no exit file yet, then the supervisor writes it and exits,
    # and it looks as if it died without a status.)
    alive = supervisor_pid(bundle) is not None
    finished_at = _mtime(bundle / EXIT)
    started_at = _mtime(bundle / INIT_PID)
    exit_code = None
    if finished_at is not None:  # the exit file is only ever renamed into place, complete
        try:
            exit_code = int((bundle / EXIT).read_text().strip())
        except ValueError:
            exit_code = None
    return ShimFiles(
        created=started_at is not None, started_at=started_at, exited=finished_at is not None,
        exit_code=exit_code, finished_at=finished_at, supervisor_alive=alive,
        last_log_line=_last_line(bundle / LOG) if finished_at and not started_at else "")


def _mtime(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_line(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
