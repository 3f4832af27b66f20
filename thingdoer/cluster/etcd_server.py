"""Running a local etcd server as a child process (``thingdoer up``, and the tests).

The server listens on loopback only, keeps its data under ``data_dir`` and is stopped by
the pid it was started with — never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from ..errors import Unavailable


class EtcdServer:
    def __init__(self, data_dir: Path, *, client_port: int = 2379, peer_port: int = 2380,
                 host: str = "127.0.0.1", binary: str = "etcd"):
        self.data_dir = Path(data_dir)
        self.client_port, self.peer_port, self.host = client_port, peer_port, host
        self.binary = binary
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        if shutil.which(self.binary) is None:
            raise Unavailable(f"{self.binary} not found: install it (apt-get install etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
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

    def stop(self, timeout: float = 10.0) -> None:
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
