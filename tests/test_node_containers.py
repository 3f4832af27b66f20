"""The node's containers on disk, with real runc: what ``Containers.observe`` reports while a
container starts, runs and exits must always be a state it really was in."""

from __future__ import annotations

import uuid

import pytest

from thingdoer.cgroups import fs as cgroupfs
from thingdoer.models import Pod, new_uid, parse_object
from thingdoer.node.containers import Containers, NodeConfig
from thingdoer.node.observed import EXITED
from thingdoer.oci import shim

from .conftest import needs_root, needs_runc

pytestmark = [pytest.mark.runc, needs_root, needs_runc]


@pytest.fixture
def containers(tmp_path, image_layout):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "oci").symlink_to(image_layout)
    node = Containers(NodeConfig(state_dir=tmp_path, cgroup_parent=f"thingdoer-test-{uuid.uuid4().hex[:10]}"))
    try:
        yield node
    finally:
        for uid in node.pods_on_disk():
            node.remove_pod(uid)
        cgroupfs.remove_tree(f"/{node.config.cgroup_parent}")


def pod(command: list[str]) -> Pod:
    return parse_object(Pod, {"metadata": {"name": "p", "namespace": "default", "uid": new_uid()},
                              "spec": {"containers": [{"name": "main", "image": "localhost/busybox:latest",
                                                       "command": command}]}})


def test_observing_a_container_as_it_exits_always_finds_its_exit_status(containers):
    """Polled as fast as possible while short containers start and exit, ``observe`` never
    reports an exit without its status (the supervisor writes files in an order; reading them
    in the wrong order, or one twice, made this fail for about one container in ten)."""
    for _ in range(30):
        p = pod(["true"])
        containers.start(p, p.spec.containers[0])
        states = []
        while True:
            obs = containers.observe(p.metadata.uid, "main")
            if obs is not None:
                states.append(obs.state)
                if obs.state == EXITED:
                    break
        assert (obs.exit_code, obs.start_error) == (0, None), states
        assert shim.wait_gone(containers.bundle(p.metadata.uid, "main"), 10)  # not our child: it left us


def test_a_container_that_cannot_start_is_a_start_error_in_the_runtimes_words(containers):
    p = pod(["/no/such/binary"])
    containers.start(p, p.spec.containers[0])
    while (obs := containers.observe(p.metadata.uid, "main")) is None or obs.state != EXITED:
        pass
    assert obs.start_error and "/no/such/binary" in obs.start_error


def test_removing_a_pod_leaves_nothing(containers):
    p = pod(["sleep", "60"])
    containers.start(p, p.spec.containers[0])
    uid = p.metadata.uid
    containers.remove_pod(uid)
    assert not containers.pod_dir(uid).exists()
    assert containers.runtime.state(containers.container_id(uid, "main")) is None
    assert not any(str(containers.pod_dir(uid)) in line for line in open("/proc/self/mountinfo"))
    for hierarchy in cgroupfs.hierarchies():
        assert not (hierarchy / containers.cgroup(uid).strip("/")).exists()
