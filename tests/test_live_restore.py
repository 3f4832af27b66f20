"""Live restore: ``kill -9`` of workerd leaves every container running under its shim; the
restarted agent rebuilds its view from the bundle dirs and shim files, reports the right status
(including the exit code of a container that exited while it was down) and starts nothing
twice. Real etcd, daemons, runc and shims."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from thingdoer.api.client import Client
from thingdoer.cgroups import fs as cgroupfs
from thingdoer.cluster.etcd_server import EtcdServer
from thingdoer.oci import shim
from thingdoer.oci.runc import Runtime

from .conftest import (clean_node_state, free_port, free_port_pair, needs_etcd, needs_root, needs_runc,
                       pod_manifest, wait_until)

pytestmark = [pytest.mark.runc, pytest.mark.etcd, needs_root, needs_runc, needs_etcd]

# Waits inside the container for a file the test drops into its rootfs: no timing involved.
WAIT_FOR = 'while [ ! -f /tmp/{0} ]; do sleep 0.05; done'


def bundle_of(state: Path, pod) -> Path:
    return state / "pods" / pod.metadata.uid / "main"


def test_killed_agent_leaves_containers_running_and_the_new_one_catches_up(cluster):
    # A TTL long enough that the node is not declared lost while its agent is down.
    state = cluster.add_worker("node-a", lease_ttl=20)
    steady = cluster.apply(pod_manifest("steady", ["sh", "-c", "echo before; " + WAIT_FOR.format("say")
                                                   + "; echo during; sleep 1000"]))
    finisher = cluster.apply(pod_manifest("finisher", ["sh", "-c", WAIT_FOR.format("go") + "; exit 7"]))
    always = cluster.apply(pod_manifest("always", ["sleep", "1000"], restartPolicy="Always"))
    pods = {"steady": steady, "finisher": finisher, "always": always}
    for name in pods:
        cluster.wait_phase(name, "Running")
    before = {name: cluster.client.get_pod("default", name) for name in pods}
    init_pids = {name: (bundle_of(state, p) / shim.INIT_PID).read_text() for name, p in pods.items()}

    cluster.kill("workerd-node-a", signal.SIGKILL)
    # While the agent is down: one container exits (code 7), another keeps writing its log.
    (bundle_of(state, finisher) / "rootfs/tmp/go").touch()
    (bundle_of(state, steady) / "rootfs/tmp/say").touch()
    wait_until(lambda: (bundle_of(state, finisher) / shim.EXIT).exists(), what="finisher's exit file")
    wait_until(lambda: b"during" in (bundle_of(state, steady) / shim.LOG).read_bytes(),
               what="steady's log, written by its shim alone")
    runtime = Runtime(state / "runc")
    assert {c["id"] for c in runtime.list() if c["status"] == "running"} == {
        f"{p.metadata.uid}-main" for p in (steady, always)}

    cluster.add_worker("node-a", lease_ttl=20)
    done = cluster.wait_phase("finisher", "Failed")
    term = done.status.containerStatuses[0].state.terminated
    assert (term.exitCode, term.reason) == (7, "Error")

    for name in ("steady", "always"):
        pod = cluster.client.get_pod("default", name)
        status, old = pod.status.containerStatuses[0], before[name].status.containerStatuses[0]
        assert pod.status.phase == "Running" and status.state.running
        assert status.state.running.startedAt == old.state.running.startedAt
        assert status.restartCount == 0
        assert (bundle_of(state, pods[name]) / shim.INIT_PID).read_text() == init_pids[name]
    # Nothing was started a second time: one runtime container per running pod, same inits.
    running = [c for c in runtime.list() if c["status"] == "running"]
    assert sorted(c["id"] for c in running) == sorted(f"{p.metadata.uid}-main" for p in (steady, always))
    logs = b"".join(cluster.client.logs("default", "steady")).decode()
    assert logs == "before\nduring\n"

    # The restarted agent supervises what it adopted: a kill is seen and reported.
    runtime.kill(f"{steady.metadata.uid}-main", signal.SIGKILL, all=True)
    done = cluster.wait_phase("steady", "Failed")
    assert done.status.containerStatuses[0].state.terminated.exitCode == 137


def test_killed_up_restarts_over_its_running_containers(tmp_path, image_layout):
    """``kill -9`` of the all-in-one ``thingdoer up``: its container runs on, and a new ``up``
    on the same state dir adopts the etcd the old one left and the container, started once."""
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "oci").symlink_to(image_layout)
    api_port, etcd_port = free_port(), free_port_pair()
    cgroup_parent = f"thingdoer-test-{uuid.uuid4().hex[:10]}"
    argv = [sys.executable, "-m", "thingdoer", "-v", "up", "--state-dir", str(state),
            "--etcd-port", str(etcd_port), "--listen", f"127.0.0.1:{api_port}",
            "--port", str(free_port()), "--network-mode", "none", "--cgroup-parent", cgroup_parent,
            "--node-name", "solo", "--lease-ttl", "20", "--renew-interval", "1"]
    client = Client(f"http://127.0.0.1:{api_port}", timeout=5)
    procs: list[subprocess.Popen] = []

    def up() -> None:
        with open(tmp_path / "up.log", "ab") as log:
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        wait_until(lambda: _ready(client), what="the cluster to be up")

    try:
        up()
        client.create_pod(pod_manifest("long", ["sleep", "1000"]))
        client.wait_pod("default", "long", lambda p: p.status.phase == "Running", 60)
        pod = client.get_pod("default", "long")
        init = (bundle_of(state, pod) / shim.INIT_PID).read_text()

        os.kill(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait(10)
        up()
        after = client.get_pod("default", "long")
        assert after.status.phase == "Running" and after.status.containerStatuses[0].restartCount == 0
        assert (bundle_of(state, pod) / shim.INIT_PID).read_text() == init
        assert [c["id"] for c in Runtime(state / "runc").list()] == [f"{pod.metadata.uid}-main"]
    finally:
        client.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        _stop_left_etcd(state / "etcd", etcd_port)
        clean_node_state(state)
        cgroupfs.remove_tree(f"/{cgroup_parent}")


def _ready(client: Client) -> bool:
    try:
        return client.get_node("solo").ready
    except Exception:
        return False


def _stop_left_etcd(data_dir: Path, port: int) -> None:
    """The etcd our first ``up`` started, if no later ``up`` stopped it (by its recorded pid)."""
    server = EtcdServer(data_dir, client_port=port, peer_port=port + 1)
    if server._adopt():
        server.stop()
