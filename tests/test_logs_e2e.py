"""Pod logs end to end (apid → node agent → CRI files written by the shim): following across
rotation at the node's configured size, timestamps, tail, since, and ``previous`` for the
last run of a restarted container. Real etcd, daemons, runc and shims."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import needs_etcd, needs_root, needs_runc, pod_manifest, wait_until

pytestmark = [pytest.mark.runc, pytest.mark.etcd, needs_root, needs_runc, needs_etcd]

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


def text(cluster, name: str, **kwargs) -> str:
    return b"".join(cluster.client.logs("default", name, **kwargs)).decode()


def test_follow_reads_every_line_while_the_log_rotates(cluster):
    state = cluster.add_worker("node-a", extra_args=["--container-log-max-size", "4Ki",
                                                     "--container-log-max-files", "5"])
    script = ("while [ ! -f /tmp/go ]; do sleep 0.05; done; i=0; while [ $i -lt 600 ]; do "
              "echo line$i; i=$((i+1)); [ $((i % 20)) = 0 ] && sleep 0.05; done; exit 0")
    pod = cluster.apply(pod_manifest("writer", ["sh", "-c", script]))
    cluster.wait_phase("writer", "Running")
    followed: list[bytes] = []
    follower = threading.Thread(target=lambda: followed.extend(
        cluster.client.logs("default", "writer", follow=True)))
    follower.start()
    (state / "pods" / pod.metadata.uid / "main" / "rootfs/tmp/go").touch()
    follower.join(60)
    assert not follower.is_alive(), "logs -f did not end when the container exited"
    assert b"".join(followed).decode() == "".join(f"line{i}\n" for i in range(600))
    bundle = state / "pods" / pod.metadata.uid / "main"
    assert sorted(p.name for p in bundle.glob("container.log*")) == [
        "container.log", "container.log.1", "container.log.2", "container.log.3", "container.log.4"]
    # What is kept is the newest lines, the tail reaches back across the rotated files.
    assert text(cluster, "writer", tail_lines=150) == "".join(f"line{i}\n" for i in range(450, 600))


def test_timestamps_tail_and_since(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("talker", ["sh", "-c", "echo one; echo two; echo three"]))
    cluster.wait_phase("talker", "Succeeded")
    assert text(cluster, "talker") == "one\ntwo\nthree\n"
    stamped = text(cluster, "talker", timestamps=True).splitlines()
    assert len(stamped) == 3 and all(STAMP.match(line) for line in stamped)
    assert [STAMP.sub("", line) for line in stamped] == ["one", "two", "three"]
    assert text(cluster, "talker", tail_lines=1) == "three\n"
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert text(cluster, "talker", since_time=future) == ""
    assert text(cluster, "talker", since_seconds=3600) == "one\ntwo\nthree\n"


def test_previous_is_the_last_run_of_a_restarted_container(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("crasher", ["sh", "-c", "echo run $(cat /proc/sys/kernel/random/uuid); exit 1"],
                               restartPolicy="Always"))
    cluster.client.wait_pod("default", "crasher",
                            lambda p: bool(p.status.containerStatuses)
                            and p.status.containerStatuses[0].restartCount >= 1, 60)
    previous = text(cluster, "crasher", previous=True)
    assert re.fullmatch(r"run [0-9a-f-]{36}\n", previous), previous
    wait_until(lambda: text(cluster, "crasher").startswith("run "), what="the current run's output")
    assert text(cluster, "crasher") != previous  # each run prints its own uuid
