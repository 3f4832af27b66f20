"""Run inside the VM (``tests/vm/run.sh``; ``tests/test_cgroups_vm.py`` boots it): the node's
cgroup behaviours on a real cgroup v2 kernel, with real runc, without etcd or daemons (Python
under TCG is ~14x slower; a whole cluster would not fit the tier's time).

A memory hog is OOMKilled (from the pod cgroup's ``memory.events``); a fork bomb stops at the
pod's ``pids.max``; a cpu hog under 0.2 cpu is throttled; the collector's memory figure is
within a few MiB of what a container holds; the pod cgroup carries the summed limits.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from thingdoer.cgroups import fs as cgroupfs
from thingdoer.models import Pod, new_uid, parse_object
from thingdoer.node.containers import Containers, NodeConfig
from thingdoer.node.observed import EXITED, container_status
from thingdoer.node.stats import Collector

from ..conftest import wait_until

MiB = 2**20
pytestmark = pytest.mark.skipif(not os.environ.get("THINGDOER_VM"), reason="runs inside tests/vm/run.sh only")


@pytest.fixture
def node(tmp_path, image_layout):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "oci").symlink_to(image_layout)
    containers = Containers(NodeConfig(state_dir=tmp_path, cgroup_parent=f"thingdoer-test-{uuid.uuid4().hex[:10]}",
                                       pids_limit=512))
    try:
        yield containers
    finally:
        for uid in containers.pods_on_disk():
            containers.remove_pod(uid)
        cgroupfs.remove_tree(f"/{containers.config.cgroup_parent}")


def make_pod(command: list[str], limits: dict, annotations: dict | None = None) -> Pod:
    return parse_object(Pod, {
        "metadata": {"name": "p", "namespace": "default", "uid": new_uid(), "annotations": annotations or {}},
        "spec": {"containers": [{"name": "main", "image": "localhost/busybox:latest", "command": command,
                                 "resources": {"limits": limits}}]}})


def run(node: Containers, pod: Pod) -> None:
    node.start(pod, pod.spec.containers[0])


def exited(node: Containers, pod: Pod):
    return wait_until(lambda: (o := node.observe(pod.metadata.uid, "main")) and o.state == EXITED and o,
                      timeout=120, what="the container to exit")


def usage(node: Containers, pod: Pod, container: str | None = None):
    return node.cgroups.usage(node.cgroup(pod.metadata.uid, container))


def test_the_host_is_cgroup_v2(node):
    assert node.cgroups.mode == "v2"


def test_a_memory_hog_is_oom_killed(node):
    pod = make_pod(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], {"memory": "16Mi"})
    run(node, pod)
    obs = exited(node, pod)
    status = container_status("busybox", obs, name="main")
    assert (status.state.terminated.exitCode, status.state.terminated.reason) == (137, "OOMKilled")


def test_the_pod_cgroup_has_the_limits_and_a_fork_bomb_stops_at_pids_max(node):
    pod = make_pod(["sh", "-c", "b() { b | b & }; b; sleep 600"], {"cpu": "200m", "memory": "64Mi"},
                   {"thingdoer.io/pids-limit": "30"})
    run(node, pod)
    u = wait_until(lambda: (u := usage(node, pod)) and u.pids_current >= 25 and u, timeout=120,
                   what="the fork bomb to fill its pids")
    assert (u.pids_limit, u.memory_limit, u.cpu_quota_cores) == (30, 64 * MiB, 0.2)
    assert u.pids_current <= 30


def test_a_cpu_hog_is_throttled(node):
    pod = make_pod(["sh", "-c", "while :; do :; done"], {"cpu": "200m"})
    run(node, pod)
    wait_until(lambda: (u := usage(node, pod)) and u.cpu_periods, timeout=120, what="the hog to run")
    first = usage(node, pod)
    t0 = time.monotonic()
    time.sleep(3)
    last = usage(node, pod)
    cores = (last.cpu_usage_seconds - first.cpu_usage_seconds) / (time.monotonic() - t0)
    # cpu.max is only roughly enforced under TCG: assert throttling, not the exact share
    assert last.cpu_throttled_periods > first.cpu_throttled_periods
    assert cores < 0.5, cores


def test_the_collector_shows_memory_within_a_few_mib_of_what_is_held(node):
    pod = make_pod(["sh", "-c", "dd if=/dev/zero of=/dev/shm/x bs=1M count=32 && exec sleep 600"],
                   {"memory": "64Mi"})
    run(node, pod)
    wait_until(lambda: (u := usage(node, pod, "main")) and u.pids_current == 1 and u.memory_peak >= 32 * MiB,
               timeout=120, what="the container to hold 32 MiB")
    stats = Collector(node.cgroups, node.cgroup, lambda: {pod.metadata.uid: pod}, "vm").collect()
    held = stats["pods"][0]["containers"][0]["usage"]["memory_working_set"]
    assert abs(held - 32 * MiB) < 4 * MiB, held / MiB
    assert stats["node"]["cgroup_mode"] == "v2"
