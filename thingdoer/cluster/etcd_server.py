"""Running a local etcd server as a child process (``thingdoer up``, and the tests).

The server listens on loopback only, keeps its data under ``data_dir`` and is stopped by
the pid it was started with — never by name. It runs in a session of its own, so a ``kill -9``
of ``thingdoer up`` leaves it running; the next ``up`` on the same data dir adopts it (its pid
and start time are in ``data_dir/etcd.pid``) instead of failing to bind its ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ..errors import Unavailable

PID_FILE = "etcd.pid"


def _start_time(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot): with the pid, names a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


class EtcdServer:
    def __init__(self, data_dir: Path, *, client_port: int = 2379, peer_port: int = 2380,
                 host: str = "127.0.0.1", binary: str = "etcd"):
        self.data_dir = Path(data_dir)
        self.client_port, self.peer_port, self.host = client_port, peer_port, host
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.adopted: int | None = None  # pid of an etcd a killed ``up`` left behind

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        if shutil.which(self.binary) is None:
            raise Unavailable(f"{self.binary} not found: install it (apt-get install etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._adopt():
            return
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [self.binary, "--name", "thingdoer", "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"thingdoer={peer}",
                "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]
        log = open(self.data_dir / "etcd.log", "ab")
        try:
            # A session of its own: a Ctrl-C meant for the caller reaches etcd only through it.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        (self.data_dir / PID_FILE).write_text(f"{self.proc.pid} {_start_time(self.proc.pid)}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"etcd exited with {self.proc.returncode}: see "
                                  f"{self.data_dir / 'etcd.log'}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"etcd did not become healthy within {timeout:.0f}s: see "
                          f"{self.data_dir / 'etcd.log'}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as answer:
                return json.loads(answer.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _adopt(self) -> bool:
        """Take over the etcd a killed ``up`` left running on this data dir (known by its pid
        *and* start time, as pids are reused), if it still answers."""
        try:
            pid_text, _, started = (self.data_dir / PID_FILE).read_text().partition(" ")
            pid = int(pid_text)
            alive = _start_time(pid) == started.strip()
        except (OSError, ValueError):
            return False
        if alive and self.healthy():
            self.adopted = pid
            return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.adopted is not None:  # not our child: signal it by pid and watch /proc
            pid, self.adopted = self.adopted, None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
                deadline = time.monotonic() + timeout
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not Path(f"/proc/{pid}").exists():
                    return
            return
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait()
