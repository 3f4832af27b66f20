"""The whole path, for real: apid, schedulerd, reaperd and workerd processes on a real etcd,
pods run as runc containers from a busybox image built from busybox-static."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thingdoer.cluster.keys import Keys
from thingdoer.cluster.store import Store
from thingdoer.errors import ThingdoerError

from .conftest import REPO, needs_etcd, needs_root, needs_runc, pod_manifest, wait_until

pytestmark = [pytest.mark.runc, pytest.mark.etcd, needs_root, needs_runc, needs_etcd]


def stored_pods(cluster) -> list[str]:
    async def keys():
        async with Store(cluster.etcd.endpoint) as store:
            listing = await store.list(Keys(cluster.prefix).pods())
            return [kv.key for kv in listing.items]
    return asyncio.run(keys())


def test_readme_flow_hello_pod_succeeds_with_logs(cluster):
    """examples/hello.yaml: scheduled, run by runc within its limits, Succeeded, logs readable."""
    cluster.add_worker("node-a")
    manifest = yaml.safe_load((REPO / "examples" / "hello.yaml").read_text())
    created = cluster.apply(manifest)
    assert created.status.phase == "Pending"

    pod = cluster.wait_phase(created.metadata.name, "Succeeded")

    assert pod.spec.nodeName == "node-a"
    state = pod.status.containerStatuses[0].state.terminated
    assert state.exitCode == 0 and state.reason == "Completed"
    logs = b"".join(cluster.client.logs("default", pod.metadata.name)).decode()
    assert "hello from thingdoer" in logs
    # The limits were real cgroup limits: the container printed its own memory limit.
    assert f"memory limit: {64 * 1024 * 1024}" in logs


def test_failing_command_gives_failed_with_its_exit_code(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("fails", ["sh", "-c", "echo about to fail; exit 7"]))

    pod = cluster.wait_phase("fails", "Failed")

    terminated = pod.status.containerStatuses[0].state.terminated
    assert (terminated.exitCode, terminated.reason) == (7, "Error")
    assert b"about to fail" in b"".join(cluster.client.logs("default", "fails"))


def test_a_command_that_cannot_start_reports_the_runtime_error(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("nocmd", ["/no/such/binary"]))

    pod = cluster.wait_phase("nocmd", "Failed")

    terminated = pod.status.containerStatuses[0].state.terminated
    assert terminated.reason == "StartError"
    assert "/no/such/binary" in terminated.message


def test_invalid_manifest_is_refused_and_not_stored(cluster):
    bad = pod_manifest("bad", ["true"], memory="lots")
    with pytest.raises(ThingdoerError) as refused:
        cluster.apply(bad)
    assert refused.value.reason == "Invalid"
    assert 'spec.containers[0].resources.limits.memory: Invalid value: "lots"' in str(refused.value)
    assert stored_pods(cluster) == []


def test_existing_pod_name_gets_already_exists(cluster):
    cluster.apply(pod_manifest("twice", ["true"]))
    with pytest.raises(ThingdoerError) as refused:
        cluster.apply(pod_manifest("twice", ["true"]))
    assert refused.value.reason == "AlreadyExists"
    assert len(stored_pods(cluster)) == 1


def test_too_big_pod_stays_unschedulable_until_a_bigger_node_joins(cluster):
    cluster.add_worker("small", cpu="1", memory="1Gi")
    cluster.apply(pod_manifest("big", ["true"], cpu="2", memory="2Gi"))

    pod = wait_until(lambda: (p := cluster.client.get_pod("default", "big")).status.reason == "Unschedulable"
                     and p, what="big to be marked Unschedulable")
    assert pod.status.phase == "Pending" and not pod.spec.nodeName
    assert "Insufficient cpu" in pod.status.message and "Insufficient memory" in pod.status.message

    cluster.add_worker("large", cpu="4", memory="8Gi")
    pod = cluster.wait_phase("big", "Succeeded")
    assert pod.spec.nodeName == "large"


def test_node_selector_is_honoured(cluster):
    cluster.add_worker("plain")
    cluster.add_worker("fast", labels={"disk": "ssd"})
    cluster.apply(pod_manifest("picky", ["true"], node_selector={"disk": "ssd"}))
    assert cluster.wait_phase("picky", "Succeeded").spec.nodeName == "fast"


def test_two_workers_share_pods_by_capacity(cluster):
    """Each node fits two 1-cpu pods: four of them must land two and two, and all run."""
    cluster.add_worker("w1", cpu="2", memory="4Gi")
    cluster.add_worker("w2", cpu="2", memory="4Gi")
    for i in range(4):
        cluster.apply(pod_manifest(f"p{i}", ["sleep", "1"], cpu="1", memory="64Mi"))

    nodes = [cluster.wait_phase(f"p{i}", "Succeeded").spec.nodeName for i in range(4)]

    assert sorted(nodes) == ["w1", "w1", "w2", "w2"]


def test_pods_beyond_capacity_wait_for_room(cluster):
    """A node full of running pods takes the next one only when one of them has finished."""
    cluster.add_worker("only", cpu="1", memory="1Gi")
    cluster.apply(pod_manifest("first", ["sh", "-c", "sleep 2"], cpu="1"))
    cluster.wait_phase("first", "Running")
    cluster.apply(pod_manifest("second", ["true"], cpu="1"))
    waiting = wait_until(lambda: (p := cluster.client.get_pod("default", "second")).status.reason
                         == "Unschedulable" and p, what="second to wait")
    assert not waiting.spec.nodeName
    assert cluster.wait_phase("second", "Succeeded").spec.nodeName == "only"


def test_killed_worker_is_reaped_and_its_pods_marked_node_lost(cluster):
    cluster.add_worker("doomed", lease_ttl=2)
    cluster.apply(pod_manifest("victim", ["sleep", "600"]))
    cluster.wait_phase("victim", "Running")

    cluster.kill("workerd-doomed")  # SIGKILL: the lease is no longer renewed

    pod = cluster.wait_phase("victim", "Failed", timeout=15)
    assert pod.status.reason == "NodeLost"
    node = cluster.client.get_node("doomed")
    assert not node.ready and node.condition("Ready").status == "Unknown"


def test_deleting_a_running_pod_stops_it_within_the_grace_period(cluster):
    state = cluster.add_worker("node-a")
    command = ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"]
    cluster.apply(pod_manifest("stopme", command, grace=5))
    pod = cluster.wait_phase("stopme", "Running")
    wait_until(lambda: b"started" in b"".join(cluster.client.logs("default", "stopme")), what="trap set")
    init_pid = int((state / "pods" / pod.metadata.uid / "main" / "pid").read_text())

    cluster.client.delete_pod("default", "stopme")

    with pytest.raises(ThingdoerError) as gone:
        cluster.client.wait_pod("default", "stopme", lambda p: False, timeout=5 + 10)
    assert gone.value.reason == "NotFound"
    assert not Path(f"/proc/{init_pid}").exists()
    assert not (state / "pods" / pod.metadata.uid).exists()


def test_a_pod_ignoring_sigterm_is_killed_after_its_grace_period(cluster):
    state = cluster.add_worker("node-a")
    cluster.apply(pod_manifest("stubborn", ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"], grace=1))
    pod = cluster.wait_phase("stubborn", "Running")
    init_pid = int((state / "pods" / pod.metadata.uid / "main" / "pid").read_text())

    cluster.client.delete_pod("default", "stubborn")

    with pytest.raises(ThingdoerError):
        cluster.client.wait_pod("default", "stubborn", lambda p: False, timeout=15)
    assert not Path(f"/proc/{init_pid}").exists()


def test_containers_survive_an_agent_restart_and_are_reported_after(cluster):
    """kill -9 of workerd leaves the container running; a new workerd reports its exit."""
    state = cluster.add_worker("node-a", lease_ttl=10)
    cluster.apply(pod_manifest("durable", ["sh", "-c", "sleep 2; exit 3"]))
    pod = cluster.wait_phase("durable", "Running")
    init_pid = int((state / "pods" / pod.metadata.uid / "main" / "pid").read_text())

    cluster.kill("workerd-node-a")
    assert Path(f"/proc/{init_pid}").exists(), "killing the agent killed the container"
    cluster.add_worker("node-a", lease_ttl=10)

    pod = cluster.wait_phase("durable", "Failed")
    assert pod.status.containerStatuses[0].state.terminated.exitCode == 3
    assert pod.status.containerStatuses[0].restartCount == 0


def test_cli_errors_are_one_line_without_traceback(cluster):
    env = dict(os.environ, THINGDOER_SERVER=cluster.server)
    bad = subprocess.run([sys.executable, "-m", "thingdoer", "get", "pod", "nope"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == 'error: pods "nope" not found'

    down = subprocess.run([sys.executable, "-m", "thingdoer", "--server", "http://127.0.0.1:1", "get", "pods"],
                          capture_output=True, text=True)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.startswith("error: cannot reach apid at http://127.0.0.1:1")


def test_cli_run_wait_logs_and_describe(cluster):
    cluster.add_worker("node-a")
    env = dict(os.environ, THINGDOER_SERVER=cluster.server)

    def thingdoer(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "thingdoer", *args], env=env, capture_output=True, text=True)

    ran = thingdoer("run", "greet", "--image", "localhost/busybox:latest", "--cpu", "200m", "--memory", "32Mi",
                    "--env", "WHO=world", "--", "sh", "-c", "echo hello $WHO")
    assert ran.returncode == 0, ran.stderr
    waited = thingdoer("wait", "pod", "greet", "--for", "phase=Succeeded", "--timeout", "60s")
    assert waited.returncode == 0, waited.stderr
    assert thingdoer("logs", "greet").stdout == "hello world\n"
    listed = thingdoer("get", "pods").stdout.splitlines()
    assert listed[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert listed[1].split()[:3] == ["greet", "0/1", "Completed"]
    described = thingdoer("describe", "pod", "greet").stdout
    assert "Exit Code:  0" in described and "cpu=200m" in described

    failed_wait = thingdoer("wait", "pod", "greet", "--for", "phase=Running", "--timeout", "5s")
    assert failed_wait.returncode == 1
    assert "ended Succeeded" in failed_wait.stderr


def test_apply_reads_several_documents_from_stdin(cluster):
    cluster.add_worker("node-a")
    docs = "---\n".join(yaml.safe_dump(pod_manifest(n, ["true"])) for n in ("one", "two"))
    applied = subprocess.run([sys.executable, "-m", "thingdoer", "--server", cluster.server, "apply", "-f", "-"],
                             input=docs, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["pod/one created", "pod/two created"]
    for name in ("one", "two"):
        cluster.wait_phase(name, "Succeeded")


def test_a_missing_image_keeps_the_pod_pending_with_err_image_pull(cluster):
    cluster.add_worker("node-a")
    manifest = pod_manifest("noimage", ["true"])
    manifest["spec"]["containers"][0]["image"] = "localhost/nothing:here"
    cluster.apply(manifest)

    def waiting():
        statuses = cluster.client.get_pod("default", "noimage").status.containerStatuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason == "ErrImagePull" \
            and statuses[0].state.waiting
    reason = wait_until(waiting, what="ErrImagePull")
    assert "localhost/nothing:here" in reason.message
    assert cluster.client.get_pod("default", "noimage").status.phase == "Pending"


def test_cli_get_watch_prints_the_pod_until_it_completes(cluster):
    import queue
    import threading

    cluster.add_worker("node-a")
    watch = subprocess.Popen([sys.executable, "-m", "thingdoer", "--server", cluster.server, "get", "pods", "-w"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout], daemon=True).start()
    try:
        cluster.apply(pod_manifest("watched", ["sh", "-c", "sleep 1"]))
        seen = []
        deadline = time.monotonic() + 60
        while not any("Completed" in line for line in seen):
            assert time.monotonic() < deadline, f"no Completed line in {seen}"
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        rows = [line.split() for line in seen if line.startswith("watched")]
        statuses = [row[2] for row in rows]
        assert "Running" in statuses and statuses[-1] == "Completed"
    finally:
        watch.terminate()
        watch.wait(10)



def test_restart_policy_restarts_failing_containers_with_back_off(cluster):
    """OnFailure: a failing container is started again and again (back-off 1 s, 2 s, ...); the
    pod stays Running, and the status counts the restarts and keeps the last run's exit."""
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("flaky", ["sh", "-c", "echo run; exit 4"], restartPolicy="OnFailure"))

    def restarted_twice():
        pod = cluster.client.get_pod("default", "flaky")
        statuses = pod.status.containerStatuses or []
        return statuses and statuses[0].restartCount >= 2 and pod

    pod = wait_until(restarted_twice, what="two restarts")
    status = pod.status.containerStatuses[0]
    assert pod.status.phase == "Running"
    assert status.lastState.terminated.exitCode == 4
    assert b"run" in b"".join(cluster.client.logs("default", "flaky"))


def test_restart_policy_on_failure_lets_a_successful_container_end(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("once", ["true"], restartPolicy="OnFailure"))
    pod = cluster.wait_phase("once", "Succeeded")
    assert pod.status.containerStatuses[0].restartCount == 0


def test_a_filtered_watch_sees_pods_enter_and_leave_the_filter(cluster):
    """fieldSelector status.phase=Running: ADDED when the pod starts, DELETED when it ends."""
    import threading

    cluster.add_worker("node-a")
    _, revision = cluster.client.list_pods()
    events: list[tuple[str, str]] = []

    def watch():
        with type(cluster.client)(cluster.server) as client:
            for kind, obj in client.watch("/api/v1/namespaces/default/pods", resource_version=revision,
                                          params={"fieldSelector": "status.phase=Running", "timeoutSeconds": "60"}):
                events.append((kind, obj["status"]["phase"]))
                if kind == "DELETED":
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cluster.apply(pod_manifest("brief", ["sleep", "1"]))
    cluster.wait_phase("brief", "Succeeded")
    watcher.join(60)

    assert events[0] == ("ADDED", "Running")
    assert events[-1] == ("DELETED", "Succeeded")
    assert all(kind == "MODIFIED" for kind, _ in events[1:-1])
