"""cgroup limits on this host's real kernel (v1 here, v2 where the host is unified), through
the whole path: apid, schedulerd and workerd processes, runc containers in pod cgroups.

A memory hog is OOMKilled and reported so; a fork bomb stops at the pods' pids limit while the
node keeps answering; a cpu hog limited to 0.2 cpu is throttled near its limit; ``top`` shows a
pod's memory within a few MiB of what it holds. The VM tier (``tests/vm``) runs this same file
on cgroup v2.
"""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from thingdoer.cgroups.fs import hierarchies, mode

from .conftest import needs_etcd, needs_root, needs_runc, pod_manifest, wait_until
from .test_kubectl import Kubectl

pytestmark = [pytest.mark.runc, pytest.mark.etcd, needs_root, needs_runc, needs_etcd]
MiB = 2**20


def pod_stats(cluster, node: str, name: str) -> dict | None:
    stats = cluster.client.get_json(f"/api/v1/nodes/{node}/proxy/stats")
    return next((p for p in stats["pods"] if p["name"] == name), None)


def cli(cluster, *argv: str) -> str:
    out = subprocess.run([sys.executable, "-m", "thingdoer", "--server", cluster.server, *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_memory_hog_is_oom_killed_and_reported_so(cluster):
    cluster.add_worker("node-a")
    # dd's 64 MiB buffer is touched as it reads: far over the 16 MiB limit.
    cluster.apply(pod_manifest("hog", ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                               memory="16Mi"))
    pod = cluster.wait_phase("hog", "Failed")
    terminated = pod.status.containerStatuses[0].state.terminated
    assert (terminated.exitCode, terminated.reason) == (137, "OOMKilled")


def test_a_pod_killed_by_a_signal_is_not_called_oom_killed(cluster):
    state = cluster.add_worker("node-b")
    cluster.apply(pod_manifest("killed", ["sleep", "60"], memory="16Mi"))
    pod = cluster.wait_phase("killed", "Running")
    init = int((state / "pods" / pod.metadata.uid / "main" / "pid").read_text())
    os.kill(init, signal.SIGKILL)  # from outside: pid 1 of a pid namespace ignores its own
    terminated = cluster.wait_phase("killed", "Failed").status.containerStatuses[0].state.terminated
    assert (terminated.exitCode, terminated.reason) == (137, "Error")


def test_the_pod_cgroup_holds_the_sum_of_its_container_limits(cluster):
    cluster.add_worker("node-a")
    manifest = pod_manifest("two", ["sleep", "60"], cpu="200m", memory="32Mi")
    second = dict(manifest["spec"]["containers"][0], name="side")
    second["resources"] = {"limits": {"cpu": "300m", "memory": "16Mi"}}
    manifest["spec"]["containers"].append(second)
    cluster.apply(manifest)
    cluster.wait_phase("two", "Running")
    usage = wait_until(lambda: (pod_stats(cluster, "node-a", "two") or {}).get("usage"), what="pod stats")
    assert usage["memory_limit"] == 48 * MiB
    assert usage["cpu_quota_cores"] == pytest.approx(0.5)
    assert usage["pids_limit"] == 4096  # the node's default
    node = cluster.client.get_node("node-a")
    assert node.metadata.labels["thingdoer.io/cgroup-mode"] == mode()


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_node_stays_responsive(cluster):
    cluster.add_worker("node-a")
    manifest = pod_manifest("bomb", ["sh", "-c", "b() { b | b & }; b; sleep 60"], cpu="200m", memory="64Mi")
    manifest["metadata"]["annotations"] = {"thingdoer.io/pids-limit": "40"}
    cluster.apply(manifest)
    cluster.wait_phase("bomb", "Running")
    usage = wait_until(lambda: (u := (pod_stats(cluster, "node-a", "bomb") or {}).get("usage"))
                       and u["pids_current"] >= 30 and u, what="the fork bomb to fill its pids")
    assert usage["pids_limit"] == 40 and usage["pids_current"] <= 40
    # the node still answers: its API, and a new pod starts and finishes beside the bomb
    assert httpx.get(cluster.server + "/healthz", timeout=10).status_code == 200
    cluster.apply(pod_manifest("beside", ["sleep", "60"]))
    cluster.wait_phase("beside", "Running")
    cluster.client.delete_pod("default", "bomb")


def test_a_cpu_hog_is_throttled_near_its_limit(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("spin", ["sh", "-c", "while :; do :; done"], cpu="200m"))
    cluster.wait_phase("spin", "Running")
    wait_until(lambda: pod_stats(cluster, "node-a", "spin"), what="pod stats")
    first = pod_stats(cluster, "node-a", "spin")["usage"]
    t0 = time.monotonic()
    time.sleep(3)
    last = pod_stats(cluster, "node-a", "spin")["usage"]
    cores = (last["cpu_usage_seconds"] - first["cpu_usage_seconds"]) / (time.monotonic() - t0)
    assert 0.1 < cores < 0.3, cores
    assert last["cpu_usage_cores"] is not None and 0.1 < last["cpu_usage_cores"] < 0.3
    assert last["cpu_throttled_periods"] > first["cpu_throttled_periods"]
    assert last["cpu_throttled_seconds"] > 0


def test_top_shows_a_pods_memory_within_a_few_mib_of_what_it_holds(cluster):
    cluster.add_worker("node-a")
    # 32 MiB in the container's /dev/shm (tmpfs): charged to its memcg, and never reclaimable
    cluster.apply(pod_manifest("holder", ["sh", "-c", "dd if=/dev/zero of=/dev/shm/x bs=1M count=32 "
                                                      "&& exec sleep 60"], memory="64Mi"))
    cluster.wait_phase("holder", "Running")
    # dd done: only the shell's exec'd sleep is left, and the 32 MiB are charged
    wait_until(lambda: (u := (pod_stats(cluster, "node-a", "holder") or {}).get("usage"))
               and u["pids_current"] == 1 and u["memory_peak"] >= 32 * MiB, what="the pod to fill 32 MiB")
    rows = json.loads(cli(cluster, "top", "pods", "-o", "json"))
    row = next(r for r in rows if r["name"] == "holder")
    assert abs(row["memory"] - 32 * MiB) < 4 * MiB, row["memory"] / MiB
    assert row["memory_limit"] == 64 * MiB
    table = cli(cluster, "top", "pods")
    assert "holder" in table and "MEMORY" in table
    assert "memory working set" in cli(cluster, "stats", "holder")
    nodes = json.loads(cli(cluster, "top", "nodes", "-o", "json"))
    assert [n["name"] for n in nodes] == ["node-a"] and nodes[0]["pods"] == 1


@pytest.mark.kubectl
@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kubectl_top_reads_the_metrics_api(cluster, tmp_path):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("idle", ["sleep", "60"]))
    cluster.wait_phase("idle", "Running")
    kubectl = Kubectl(cluster.server, tmp_path)
    pods = wait_until(lambda: "idle" in (out := kubectl.run("top", "pods").stdout) and out, what="kubectl top pods")
    assert "MEMORY(bytes)" in pods and "Mi" in pods
    assert "node-a" in kubectl.ok("top", "nodes")
    listing = wait_until(lambda: cluster.client.get_json("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods")["items"],
                         what="pod metrics")
    assert listing[0]["metadata"]["name"] == "idle" and listing[0]["containers"][0]["name"] == "main"
    assert listing[0]["containers"][0]["usage"]["memory"].endswith("Ki")
    nodes = cluster.client.get_json("/apis/metrics.k8s.io/v1beta1/nodes")["items"]
    assert nodes[0]["metadata"]["name"] == "node-a"
    text = httpx.get(f"{cluster.server}/api/v1/nodes/node-a/proxy/metrics", timeout=10).text
    assert 'container_memory_working_set_bytes{namespace="default",pod="idle",container="main"}' in text


def test_a_deleted_pod_leaves_no_cgroup(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("brief", ["sleep", "60"], grace=1))
    pod = cluster.wait_phase("brief", "Running")
    cluster.client.delete_pod("default", "brief")
    wait_until(lambda: not cluster.client.list_pods("default")[0], what="the pod to go")
    for hierarchy in hierarchies():
        assert not (hierarchy / cluster.cgroup_parent / f"pod{pod.metadata.uid}").exists()


