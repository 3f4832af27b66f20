"""Fixtures that start the real thing: etcd on a free loopback port, the daemons as the same
``thingdoer`` processes users run, real runc containers from a busybox image built here.

Everything a test starts is stopped by its pid, and everything its workers made — runtime
containers, overlay mounts, cgroups (under a ``thingdoer-test-<hex>`` parent) — is removed at
teardown, even when the test failed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from thingdoer.api.client import Client
from thingdoer.cgroups import fs as cgroupfs
from thingdoer.cluster.etcd_server import EtcdServer
from thingdoer.oci.busybox import build_busybox_image
from thingdoer.oci.runc import Runtime

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD = 60.0  # seconds: how long a test waits for something before calling it broken

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, cgroups, mounts)")
needs_runc = pytest.mark.skipif(not shutil.which("runc"), reason="runc is not installed")
needs_etcd = pytest.mark.skipif(not shutil.which("etcd"), reason="etcd is not installed (etcd-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p+1 free too (etcd's client and peer ports)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def wait_until(predicate, timeout: float = HANG_GUARD, what: str = "condition", interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    """One etcd for the session; tests isolate themselves with their own key prefix."""
    port = free_port_pair()
    server = EtcdServer(tmp_path_factory.mktemp("etcd"), client_port=port, peer_port=port + 1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path):
    """An etcd of the test's own, for tests that restart or compact it."""
    port = free_port_pair()
    server = EtcdServer(tmp_path / "etcd", client_port=port, peer_port=port + 1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/thingdoer-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory) -> Path:
    layout = tmp_path_factory.mktemp("images") / "oci"
    build_busybox_image(layout)
    return layout


def run_async(coro):
    return asyncio.run(coro)


class Cluster:
    """apid + schedulerd + reaperd, and any number of workerd, as real processes."""

    def __init__(self, tmp_path: Path, etcd: EtcdServer, prefix: str, image_layout: Path):
        self.tmp = tmp_path
        self.etcd = etcd
        self.prefix = prefix
        self.image_layout = image_layout
        self.cgroup_parent = f"thingdoer-test-{uuid.uuid4().hex[:10]}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, Path] = {}
        self.api_port = free_port()
        self.server = f"http://127.0.0.1:{self.api_port}"
        self.client = Client(self.server)

    def _spawn(self, name: str, *argv: str, netns: str | None = None) -> subprocess.Popen:
        """``netns``: run it in that named network namespace (``nsenter --net``, not ``ip netns
        exec``, whose private mount namespace would hide the pod netns mounts it makes)."""
        log = open(self.tmp / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        enter = ["nsenter", f"--net=/var/run/netns/{netns}"] if netns else []
        proc = subprocess.Popen([*enter, sys.executable, "-m", "thingdoer", "-v", *argv], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def etcd_args(self) -> list[str]:
        return ["--etcd-endpoints", self.etcd.endpoint, "--etcd-prefix", self.prefix]

    def start_control_plane(self, *, reaper_resync: float = 2.0) -> None:
        self._spawn("apid", "apid", *self.etcd_args(), "--listen", f"127.0.0.1:{self.api_port}")
        self._spawn("schedulerd", "schedulerd", *self.etcd_args())
        self._spawn("reaperd", "reaperd", *self.etcd_args(), "--resync", str(reaper_resync))
        wait_until(self._api_up, what="apid to answer")

    def _api_up(self) -> bool:
        try:
            self.client.list_nodes()
            return True
        except Exception:
            return False

    def add_worker(self, name: str, *, cpu: str = "4", memory: str = "8Gi", labels: dict | None = None,
                   lease_ttl: int = 2, wait: bool = True, network: list[str] | None = None,
                   extra_args: list[str] | None = None, netns: str | None = None) -> Path:
        """Workers share this host, so by default they run without a pod network
        (``--network-mode none``, stated explicitly); ``network`` replaces those flags.
        ``extra_args`` are more workerd flags (e.g. ``--insecure-registry HOST:PORT``)."""
        state = self.tmp / f"node-{name}"
        (state / "images").mkdir(parents=True, exist_ok=True)
        link = state / "images" / "oci"
        if not link.exists():
            link.symlink_to(self.image_layout)
        port = free_port()
        argv = ["workerd", *self.etcd_args(), "--node-name", name, "--state-dir", str(state),
                "--port", str(port), "--cpu", cpu, "--memory", memory,
                "--cgroup-parent", self.cgroup_parent, "--lease-ttl", str(lease_ttl),
                "--renew-interval", str(lease_ttl / 4),
                *(network if network is not None else ["--network-mode", "none"]), *(extra_args or [])]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        self._spawn(f"workerd-{name}", *argv, netns=netns)
        self.workers[name] = state
        if wait:
            wait_until(lambda: self._node_ready(name), what=f"node {name} to be Ready")
        return state

    def _node_ready(self, name: str) -> bool:
        try:
            return self.client.get_node(name).ready
        except Exception:
            return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def apply(self, manifest: dict, namespace: str = "default"):
        return self.client.create_pod(manifest, namespace)

    def wait_phase(self, name: str, phase: str, namespace: str = "default", timeout: float = HANG_GUARD):
        return self.client.wait_pod(namespace, name, lambda p: p.status.phase == phase, timeout)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.client.close()
        for state in self.workers.values():
            clean_node_state(state)
        cgroupfs.remove_tree(f"/{self.cgroup_parent}")


def clean_node_state(state: Path) -> None:
    """Delete every runtime container of a node, unmount its rootfs overlays, remove its files."""
    runc_root = state / "runc"
    if runc_root.exists():
        runtime = Runtime(runc_root)
        for container in runtime.list():
            runtime.delete(container["id"], force=True)
    pods = state / "pods"
    if pods.exists():
        for mount in sorted(_mounts_under(pods), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
    # Supervisors exit once their runtime is gone; give them a moment before removing files.
    time.sleep(0.05)
    shutil.rmtree(state, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            mount_point = line.split()[4]
            if mount_point.startswith(str(path)):
                found.append(mount_point)
    return found


@pytest.fixture
def cluster(tmp_path, etcd, prefix, image_layout):
    c = Cluster(tmp_path, etcd, prefix, image_layout)
    try:
        c.start_control_plane()
        yield c
    finally:
        c.stop()


def pod_manifest(name: str, command: list[str], *, cpu: str | None = "100m", memory: str | None = "32Mi",
                 grace: int | None = None, node_selector: dict | None = None, **extra) -> dict:
    resources = {}
    if cpu or memory:
        limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
        resources = {"requests": dict(limits), "limits": limits}
    spec = {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": "localhost/busybox:latest", "command": command, "resources": resources}]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if node_selector:
        spec["nodeSelector"] = node_selector
    spec.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}



def pytest_sessionfinish(session, exitstatus):
    """With THINGDOER_REQUIRE_ALL_TIERS=1 (``make test``, CI), a skipped test fails the run:
    a tier that should have run but did not is a failure, not a footnote."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("THINGDOER_REQUIRE_ALL_TIERS") == "1" and skipped and exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped, but every tier must run here: "
                            "see the skip reasons (pytest -rs)", red=True)
        session.exitstatus = 1
