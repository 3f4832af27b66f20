"""The only module that runs the OCI runtime binary (runc; crun speaks the same CLI).

Every call is synchronous (callers run them in a thread; ``exec`` is the one coroutine) and
passes ``--root``, so a node's containers live in a state directory of its own. Failures become ``Unavailable`` carrying the
command and runc's own words; a container that does not exist is ``None`` from ``state``,
``NotFound`` from ``kill`` and fine for ``delete``.

The shim (``shim.py``) runs ``run --detach`` and ``delete`` with the argvs built here: it gets
its command lines from this module and never names the runtime itself. ``spawn_run`` starts
``runc run`` in the foreground (raw runs, for tests and the bench): runc stays the container's
parent and exits with its status (128+N for a death by signal N), in a session of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal as signals
import subprocess
from pathlib import Path

from thingdoer.errors import NotFound, Unavailable

CALL_TIMEOUT = 60  # seconds; state/kill/delete/list return in milliseconds when runc is healthy
# runc says "does not exist"; crun fails to open the container's state file.
_NOT_EXIST = ("does not exist", "/status`: No such file or directory")
_NOT_RUNNING = "not running"
_LOGRUS_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


class Runtime:
    def __init__(self, root: Path, binary: str = "runc"):
        self.root = Path(root)
        self.binary = binary

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def spawn_run(self, container_id: str, bundle: Path, log_path: Path,
                  pid_file: Path) -> subprocess.Popen:
        """Start the container; the returned process's exit status is the container's.

        Its stdout and stderr (and runc's own errors) are appended to ``log_path``.
        Don't use asyncio subprocesses for this: their transport kills the child on close.
        """
        argv = self.run_argv(container_id, bundle, pid_file)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                    start_new_session=True, close_fds=True)
        except OSError as err:
            raise Unavailable(f"{' '.join(argv)}: {err}: is {self.binary} installed?") from err
        finally:
            os.close(log_fd)

    def run_argv(self, container_id: str, bundle: Path, pid_file: Path) -> list[str]:
        """The foreground ``run`` command line (raw runtime runs: tests and bench)."""
        return self._argv("run", "--bundle", str(bundle), "--pid-file", str(pid_file),
                          "--no-new-keyring", container_id)

    # The shim (``shim.py``) executes these two: run detached (create and start in one call;
    # the container keeps the shim's pipes as stdio), and delete once the init has exited
    # (``--force`` also undoes a container that never started).
    def run_detached_argv(self, container_id: str, bundle: Path, pid_file: Path) -> list[str]:
        return self._argv("run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file),
                          "--no-new-keyring", container_id)

    def delete_argv(self, container_id: str) -> list[str]:
        return self._argv("delete", "--force", container_id)

    async def exec(self, container_id: str, argv: list[str]):
        """Start ``argv`` in the running container (``runc exec``); an asyncio process with
        stdout/stderr pipes (killed if the caller goes away: unlike a container, an exec
        belongs to its caller)."""
        cmd = self._argv("exec", container_id, *argv)
        try:
            return await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as err:
            raise Unavailable(f"{' '.join(cmd)}: {err}: is {self.binary} installed?") from err

    def state(self, container_id: str) -> dict | None:
        """runc's state JSON (``status``, ``pid``, ``bundle``...), or None if it doesn't exist."""
        try:
            return json.loads(self._call("state", container_id))
        except NotFound:
            return None

    def kill(self, container_id: str, signal: int | str = signals.SIGTERM,
             all: bool = False) -> None:
        """Send ``signal`` to the container's init (every process with ``all``). NotFound if the
        container doesn't exist or has no running process."""
        sig = str(int(signal)) if isinstance(signal, int) else signal
        self._call("kill", *(["--all"] if all else []), container_id, sig, not_found=_NOT_RUNNING)

    def delete(self, container_id: str, force: bool = False) -> None:
        """Delete the container (``force`` kills it first). Already gone is fine."""
        try:
            self._call("delete", *(["--force"] if force else []), container_id)
        except NotFound:
            pass

    def list(self) -> list[dict]:
        # runc prints "null" when there are none.
        return json.loads(self._call("list", "--format", "json")) or []

    def version(self) -> str:
        """The version, e.g. "1.1.5+ds1" (first line of ``--version``, last word)."""
        out = self._call_argv([self.binary, "--version"])
        return out.splitlines()[0].split()[-1]

    def _call(self, *args: str, not_found: str = "") -> str:
        return self._call_argv(self._argv(*args), not_found)

    def _call_argv(self, argv: list[str], not_found: str = "") -> str:
        cmd = " ".join(argv)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT)
        except FileNotFoundError as err:
            raise Unavailable(f"{cmd}: {self.binary} not found: install it or set its path") \
                from err
        except (OSError, subprocess.TimeoutExpired) as err:
            raise Unavailable(f"{cmd}: {err}") from err
        if proc.returncode != 0:
            message = _runc_message(proc.stderr) or f"exit status {proc.returncode}"
            if any(m in message for m in _NOT_EXIST) or (not_found and not_found in message):
                raise NotFound(f"{cmd}: {message}")
            raise Unavailable(f"{cmd}: {message}")
        return proc.stdout


def _runc_message(stderr: str) -> str:
    """runc's error in its own words: the ``msg="..."`` of its log lines, else the raw text."""
    msgs = [m.group(1).replace('\\"', '"') for m in _LOGRUS_MSG.finditer(stderr)]
    return "; ".join(msgs) if msgs else stderr.strip()
