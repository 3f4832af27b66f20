"""kubectl 1.32, unmodified, against apid: the commands people type every day work on a real
cluster (etcd, apid, schedulerd, reaperd, workerd running runc containers).

kubectl runs as a subprocess with an empty, isolated kubeconfig and ``--server``, so nothing
outside the test's tmp_path is read or written.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from thingdoer.errors import ThingdoerError

from .conftest import HANG_GUARD, needs_etcd, needs_root, needs_runc, pod_manifest, wait_until

pytestmark = [pytest.mark.kubectl, needs_root, needs_runc, needs_etcd,
              pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")]


class Kubectl:
    """``kubectl --server <apid>`` with a kubeconfig, HOME and cache of the test's own."""

    def __init__(self, server: str, tmp_path: Path):
        home = tmp_path / "kubectl-home"
        home.mkdir(exist_ok=True)
        self.argv = ["kubectl", "--server", server, "--cache-dir", str(tmp_path / "kubectl-cache")]
        self.env = dict(os.environ, HOME=str(home), KUBECONFIG=str(tmp_path / "no-kubeconfig"))
        self.tmp = tmp_path

    def run(self, *args: str, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def ok(self, *args: str, timeout: float = HANG_GUARD) -> str:
        """stdout of a kubectl command that must succeed."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.argv, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def manifest_file(self, manifest: dict) -> Path:
        path = self.tmp / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return path


@pytest.fixture
def kubectl(cluster, tmp_path) -> Kubectl:
    return Kubectl(cluster.server, tmp_path)


class LineReader:
    """Lines of a running process's stdout, read on a thread so the test can give up on time."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, predicate, timeout: float = HANG_GUARD, what: str = "a line") -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got: {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"kubectl ended before {what}; got: {self.seen}, "
                                     f"stderr: {self.proc.stderr.read()}")
            self.seen.append(line)
            if predicate(line):
                return line


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rows(output: str) -> dict[str, list[str]]:
    """A kubectl table by its first column (NAME), each row split into its cells."""
    cells = [line.split() for line in output.splitlines() if line.strip()]
    return {row[0]: row for row in cells}


def test_get_pods_prints_the_server_side_table_wide_and_json(cluster, kubectl):
    """get pods shows READY/STATUS/RESTARTS from apid's Table; -o wide adds IP and NODE;
    --sort-by gets whole objects; -o json is the pods themselves."""
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("done", ["sh", "-c", "echo hi"]))
    cluster.apply(pod_manifest("busy", ["sleep", "600"]))
    cluster.wait_phase("done", "Succeeded")
    cluster.wait_phase("busy", "Running")

    plain = rows(kubectl.ok("get", "pods"))
    assert plain["NAME"] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert plain["done"][:4] == ["done", "0/1", "Completed", "0"]
    assert plain["busy"][:4] == ["busy", "1/1", "Running", "0"]

    wide = rows(kubectl.ok("get", "pods", "-o", "wide"))
    assert wide["NAME"] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide["done"][6] == wide["busy"][6] == "node-a"

    by_status = kubectl.ok("get", "pods", "--sort-by=.status.phase").splitlines()
    assert [line.split()[0] for line in by_status] == ["NAME", "busy", "done"]  # Running < Succeeded

    listed = json.loads(kubectl.ok("get", "pods", "-o", "json"))
    assert listed["kind"] == "List"  # kubectl wraps what it got from the PodList
    items = {item["metadata"]["name"]: item for item in listed["items"]}
    assert sorted(items) == ["busy", "done"]
    assert {item["kind"] for item in items.values()} == {"Pod"}
    assert items["done"]["spec"]["nodeName"] == "node-a"
    assert items["done"]["status"]["phase"] == "Succeeded"
    assert items["busy"]["status"]["phase"] == "Running"

    single = json.loads(kubectl.ok("get", "pod", "done", "-o", "json"))
    assert (single["kind"], single["metadata"]["name"]) == ("Pod", "done")
    assert single["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    missing = kubectl.run("get", "pod", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'


def test_get_nodes_shows_the_node_ready(cluster, kubectl):
    """get nodes lists the registered worker as Ready; -o wide adds its address; -o json."""
    cluster.add_worker("node-a")
    address = cluster.client.get_node("node-a").address()

    plain = rows(kubectl.ok("get", "nodes"))
    assert plain["NAME"] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert plain["node-a"][1] == "Ready"

    wide = kubectl.ok("get", "nodes", "-o", "wide").splitlines()
    header, row = wide[0].split(), wide[1].split()
    assert header[:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    assert row[0] == "node-a" and row[5] == address

    listed = json.loads(kubectl.ok("get", "nodes", "-o", "json"))
    [node] = listed["items"]
    assert (node["kind"], node["metadata"]["name"]) == ("Node", "node-a")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert [c["status"] for c in ready] == ["True"]


def test_create_from_a_manifest_runs_the_pod(cluster, kubectl):
    """create -f (which validates on the server) stores the pod and it runs to Succeeded."""
    cluster.add_worker("node-a")
    manifest = kubectl.manifest_file(pod_manifest("made", ["sh", "-c", "echo made by kubectl"]))

    assert kubectl.ok("create", "-f", str(manifest)) == "pod/made created\n"

    pod = cluster.wait_phase("made", "Succeeded")
    assert pod.spec.nodeName == "node-a"
    again = kubectl.run("create", "-f", str(manifest))
    assert again.returncode == 1
    assert 'pods "made" already exists' in again.stderr


def test_create_refuses_unknown_fields_and_bad_quantities_and_stores_nothing(cluster, kubectl):
    """Strict field validation: an unknown field or an invalid quantity fails naming the field."""
    bogus = pod_manifest("bogus", ["true"])
    bogus["spec"]["containers"][0]["bogus"] = "yes"
    refused = kubectl.run("create", "-f", str(kubectl.manifest_file(bogus)))
    assert refused.returncode != 0
    assert 'The Pod "bogus" is invalid: spec.containers[0].bogus:' in refused.stderr

    lots = kubectl.run("create", "-f", str(kubectl.manifest_file(pod_manifest("lots", ["true"], memory="lots"))))
    assert lots.returncode != 0
    assert lots.stderr.startswith('The Pod "lots" is invalid: ')
    assert '* spec.containers[0].resources.limits.memory: Invalid value: "lots"' in lots.stderr

    pods, _ = cluster.client.list_pods()
    assert pods == []


def test_delete_stops_a_running_pod_and_waits_until_it_is_gone(cluster, kubectl):
    """delete pod sends TERM through the node and returns only once the pod is removed."""
    cluster.add_worker("node-a")
    command = ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"]
    cluster.apply(pod_manifest("stopme", command, grace=5))
    cluster.wait_phase("stopme", "Running")
    wait_until(lambda: b"started" in b"".join(cluster.client.logs("default", "stopme")), what="trap set")

    # kubectl delete waits for the DELETED event of a watch on metadata.name=stopme.
    assert kubectl.ok("delete", "pod", "stopme", "--grace-period=3", "--timeout=30s") == 'pod "stopme" deleted\n'

    with pytest.raises(ThingdoerError) as gone:
        cluster.client.get_pod("default", "stopme")
    assert gone.value.reason == "NotFound"


def test_logs_prints_the_container_output(cluster, kubectl):
    """logs NAME proxies the container's output from its node."""
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("talker", ["sh", "-c", "echo hello; echo world"]))
    cluster.wait_phase("talker", "Succeeded")

    assert kubectl.ok("logs", "talker") == "hello\nworld\n"


def test_logs_follow_streams_until_the_container_exits(cluster, kubectl):
    """logs -f, started when only the first line exists, prints every later line as the
    container writes it and exits 0 when the container ends."""
    cluster.add_worker("node-a")
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.5; done"
    cluster.apply(pod_manifest("ticker", ["sh", "-c", script]))
    cluster.wait_phase("ticker", "Running")
    wait_until(lambda: b"line 1" in b"".join(cluster.client.logs("default", "ticker")), what="line 1")

    followed = kubectl.ok("logs", "-f", "ticker")

    assert followed.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert cluster.client.get_pod("default", "ticker").status.phase == "Succeeded"


def test_get_pods_watch_shows_each_status_change(cluster, kubectl):
    """get pods -w lists, then watches from the list's resourceVersion: a new pod appears
    and its row is printed again as it moves on, up to Completed."""
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("before", ["true"]))
    cluster.wait_phase("before", "Succeeded")

    watch = kubectl.popen("get", "pods", "-w")
    try:
        out = LineReader(watch)
        out.until(lambda line: line.split()[:1] == ["before"], what="the listed pod")
        cluster.apply(pod_manifest("watched", ["sh", "-c", "sleep 1"]))
        out.until(lambda line: line.split()[:3] == ["watched", "0/1", "Completed"], what="watched Completed")
    finally:
        stop(watch)

    header = out.seen[0].split()
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    statuses = [line.split()[2] for line in out.seen if line.split()[0] == "watched"]
    assert statuses[0] == "Pending"  # the ADDED event: created, not yet on a node
    assert set(statuses[:-1]) <= {"Pending", "ContainerCreating", "Running"}
    assert statuses[-1] == "Completed"


def test_version_and_api_resources(cluster, kubectl):
    """version reports apid's Kubernetes version; api-resources lists pods and nodes."""
    version = kubectl.ok("version")
    assert "Server Version: v1.32." in version

    listed = [line.split() for line in kubectl.ok("api-resources").splitlines()[1:]]
    assert ["pods", "po", "v1", "true", "Pod"] in listed
    assert ["nodes", "no", "v1", "false", "Node"] in listed
    # metrics.k8s.io (kubectl top) is served too
    assert ["pods", "metrics.k8s.io/v1beta1", "true", "PodMetrics"] in listed
