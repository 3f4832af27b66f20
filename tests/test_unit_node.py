"""Pure unit tests of node-side logic: observed status, log tails, cgroup limits, allocatable."""


import pytest

from thingdoer.cgroups.resources import linux_resources, quota, shares
from thingdoer.models import ContainerState, ContainerStatus, Pod, PodCondition, PodStatus
from thingdoer.models.pod import ContainerStateTerminated
from thingdoer.node.host import allocatable
from thingdoer.node.logs import CHUNK, tail_offset
from thingdoer.node.observed import (CREATED, EXITED, RUNNING_STATE, START_ERROR_EXIT, Observed,
                                     container_status, desired_status, pod_phase, same_status)

# --- observed: container_status ---------------------------------------------------------------


def obs(state: str, **fields) -> Observed:
    return Observed(name="main", container_id="abc123", image_id="sha256:img", state=state,
                    started_at="2024-01-01T00:00:00Z", **fields)


def test_running_container_status():
    """A running container is ready and started, with its runc id, image id and start time."""
    status = container_status("busybox", obs(RUNNING_STATE))
    assert status.model_dump(exclude_none=True) == {
        "name": "main", "image": "busybox", "imageID": "sha256:img", "containerID": "runc://abc123",
        "ready": True, "started": True, "restartCount": 0,
        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}


@pytest.mark.parametrize("exit_code, reason, signal", [
    (0, "Completed", None),
    (1, "Error", None),
    (128, "Error", None),      # 128 itself is no signal
    (137, "Error", 9),         # 128 + SIGKILL
    (143, "Error", 15),        # 128 + SIGTERM
    (192, "Error", 64),        # 128 + SIGRTMAX, the highest signal
])
def test_exited_container_status(exit_code, reason, signal):
    """An exited container reports its code, Completed/Error, and the signal for codes over 128."""
    status = container_status("busybox", obs(EXITED, exit_code=exit_code, finished_at="2024-01-01T00:01:00Z"))
    term = status.state.terminated
    assert term.exitCode == (255 if exit_code is None else exit_code)
    assert (term.reason, term.signal) == (reason, signal)
    assert (term.startedAt, term.finishedAt, term.containerID) == (
        "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "abc123")
    assert not status.ready and status.started is False
    assert status.state.running is None and status.state.waiting is None


def test_unknown_exit_is_reported_as_255():
    """An exited container with no recorded exit code reports 255 and Error."""
    term = container_status("busybox", obs(EXITED)).state.terminated
    assert (term.exitCode, term.reason) == (255, "Error")


@pytest.mark.parametrize("exit_code", [255, 200, None])
def test_exit_codes_beyond_any_signal_report_no_signal(exit_code):
    """Exit codes above 128 + SIGRTMAX (64) are plain exits, not signal deaths."""
    assert container_status("busybox", obs(EXITED, exit_code=exit_code)).state.terminated.signal is None


def test_start_error_container_status():
    """A container that never started is StartError with exit 128 and the runtime's own message."""
    status = container_status("busybox", obs(EXITED, start_error='exec: "nope": not found', exit_code=1,
                                             finished_at="2024-01-01T00:01:00Z"))
    term = status.state.terminated
    assert START_ERROR_EXIT == 128
    assert (term.exitCode, term.reason, term.message) == (128, "StartError", 'exec: "nope": not found')
    assert term.startedAt is None and term.signal is None
    assert term.finishedAt == "2024-01-01T00:01:00Z"


def test_created_container_is_waiting():
    """A created-but-not-started container waits with ContainerCreating."""
    status = container_status("busybox", obs(CREATED))
    assert status.state.waiting.reason == "ContainerCreating"
    assert not status.ready and status.containerID == "runc://abc123"


@pytest.mark.parametrize("reason, message", [("ContainerCreating", None), ("ErrImagePull", "no such image")])
def test_unobserved_container_is_waiting(reason, message):
    """With nothing on disk yet, the container waits with the given reason and message."""
    status = container_status("busybox", None, reason, message, name="main")
    assert status.name == "main" and status.containerID is None and not status.ready
    assert (status.state.waiting.reason, status.state.waiting.message) == (reason, message)


def test_backing_off_container_waits_in_crash_loop():
    """An exited container due for restart waits in CrashLoopBackOff, its exit kept as lastState."""
    last = ContainerStateTerminated(exitCode=2, reason="Error")
    status = container_status("busybox", obs(EXITED, exit_code=1, finished_at="2024-01-01T00:01:00Z"),
                              restarts=3, last=last, backing_off=20.0)
    assert (status.state.waiting.reason, status.state.waiting.message) == (
        "CrashLoopBackOff", "back-off 20s restarting container main")
    assert status.state.terminated is None and not status.ready
    assert status.restartCount == 3
    assert status.lastState.terminated.exitCode == 1          # this exit, not the older one
    assert status.lastState.terminated.finishedAt == "2024-01-01T00:01:00Z"


@pytest.mark.parametrize("observed", [None, obs(RUNNING_STATE)])
def test_restarted_container_keeps_its_history(observed):
    """restarts and the last termination are reported while waiting or running again."""
    last = ContainerStateTerminated(exitCode=137, signal=9, reason="Error")
    status = container_status("busybox", observed, name="main", restarts=2, last=last)
    assert status.restartCount == 2
    assert status.lastState.terminated == last


def test_first_run_has_no_last_state():
    """A container that never ran before reports no lastState and zero restarts."""
    status = container_status("busybox", obs(RUNNING_STATE))
    assert status.lastState is None and status.restartCount == 0


# --- observed: pod_phase ----------------------------------------------------------------------

def cs(kind: str, exit_code: int = 0, ready: bool = False, restarts: int = 0) -> ContainerStatus:
    state = {"waiting": ContainerState(waiting={"reason": "ContainerCreating"}),
             "backoff": ContainerState(waiting={"reason": "CrashLoopBackOff"}),
             "running": ContainerState(running={}),
             "exited": ContainerState(terminated=ContainerStateTerminated(exitCode=exit_code))}[kind]
    return ContainerStatus(name=f"c-{kind}-{exit_code}", image="busybox", state=state, ready=ready,
                           restartCount=restarts)


@pytest.mark.parametrize("statuses, phase", [
    ([], "Pending"),
    ([cs("waiting")], "Pending"),
    ([cs("waiting"), cs("waiting")], "Pending"),
    ([cs("running")], "Running"),
    ([cs("running"), cs("waiting")], "Running"),
    ([cs("running"), cs("exited", 1)], "Running"),
    ([cs("exited", 0), cs("waiting")], "Running"),     # under way: some exited, others starting
    ([cs("exited", 0)], "Succeeded"),
    ([cs("exited", 0), cs("exited", 0)], "Succeeded"),
    ([cs("exited", 1)], "Failed"),
    ([cs("exited", 0), cs("exited", 137)], "Failed"),
    ([cs("backoff")], "Running"),                      # waiting to be restarted
    ([cs("backoff"), cs("exited", 1)], "Running"),
    ([cs("waiting", restarts=2)], "Running"),          # being restarted after earlier runs
    ([cs("waiting", restarts=1), cs("exited", 0)], "Running"),
])
def test_pod_phase(statuses, phase):
    """pod_phase: Running while any runs; all exited → Succeeded iff all 0; nothing started → Pending."""
    assert pod_phase(statuses) == phase


# --- observed: desired_status / same_status ---------------------------------------------------

def scheduled_pod() -> Pod:
    return Pod.model_validate({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}], "nodeName": "n1"},
        "status": {"phase": "Pending", "podIP": "10.1.0.7", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
            {"type": "Ready", "status": "True"}]}})


@pytest.mark.parametrize("statuses, phase, ready", [
    ([cs("running", ready=True)], "Running", "True"),
    ([cs("running", ready=True), cs("waiting")], "Running", "False"),
    ([cs("exited", 0)], "Succeeded", "False"),
    ([], "Pending", "False"),
])
def test_desired_status(statuses, phase, ready):
    """desired_status keeps PodScheduled, replaces other conditions, and derives phase and readiness."""
    status = desired_status(scheduled_pod(), statuses, "192.168.1.5", "2024-01-01T00:00:05Z")
    assert (status.phase, status.hostIP, status.podIP, status.startTime) == (
        phase, "192.168.1.5", "10.1.0.7", "2024-01-01T00:00:05Z")
    assert [(c.type, c.status) for c in status.conditions] == [
        ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", ready), ("Ready", ready)]
    assert status.conditions[0].lastTransitionTime == "2024-01-01T00:00:00Z"
    assert status.containerStatuses == statuses


def test_same_status_ignores_condition_timestamps_only():
    """same_status is blind to lastTransitionTime and nothing else."""
    base = desired_status(scheduled_pod(), [cs("running", ready=True)], "192.168.1.5", "t0")
    other = base.model_copy(deep=True)
    other.conditions[1].lastTransitionTime = "2030-01-01T00:00:00Z"
    assert same_status(base, other)
    for change in (lambda s: setattr(s, "phase", "Failed"),
                   lambda s: setattr(s.conditions[2], "status", "False"),
                   lambda s: s.conditions.append(PodCondition(type="X", status="True")),
                   lambda s: setattr(s.containerStatuses[0], "restartCount", 1),
                   lambda s: setattr(s, "podIP", "10.9.9.9")):
        changed = base.model_copy(deep=True)
        change(changed)
        assert not same_status(base, changed)


def test_same_status_of_empty_statuses():
    """Two default statuses are the same."""
    assert same_status(PodStatus(), PodStatus())


# --- logs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, lines, tail", [
    (b"a\nb\nc\n", 1, b"c\n"),
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
    (b"a\nb\nc\n", 10, b"a\nb\nc\n"),   # fewer lines than asked: the whole file
    (b"a\nb\nc", 1, b"c"),              # no trailing newline: the partial line is a line
    (b"a\nb\nc", 2, b"b\nc"),
    (b"a\nb\nc", 5, b"a\nb\nc"),
    (b"only\n", 1, b"only\n"),
    (b"only", 1, b"only"),
    (b"\n\n\n", 1, b"\n"),              # empty lines count
    (b"\n\n\n", 2, b"\n\n"),
    (b"\n", 1, b"\n"),
    (b"", 1, b""),                      # empty file
    (b"a\nb\n", 0, b""),                # zero lines: nothing
    (b"a\nb\n", -1, b""),
])
def test_tail_offset(tmp_path, content, lines, tail):
    """tail_offset points at the start of the last N lines, a final newline ending the last line."""
    path = tmp_path / "log"
    path.write_bytes(content)
    assert content[tail_offset(path, lines):] == tail


@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("lines", [1, 2, 3])
def test_tail_offset_across_the_chunk_boundary(tmp_path, shift, lines):
    """Lines that straddle, end or start at the 64 KiB read boundary are counted exactly."""
    long_line = b"x" * (CHUNK + shift) + b"\n"        # its newline lands around the boundary
    content = b"first\n" + long_line + b"y\n" + b"z" * (CHUNK - 1) + b"\n"
    path = tmp_path / "log"
    path.write_bytes(content)
    expected = b"".join(content.splitlines(keepends=True)[-lines:])
    assert content[tail_offset(path, lines):] == expected


def test_tail_offset_of_many_short_lines_over_several_chunks(tmp_path):
    """Counting back over many chunks finds the exact line start."""
    content = b"".join(b"line %06d\n" % i for i in range(30_000))   # ~330 KiB
    path = tmp_path / "log"
    path.write_bytes(content)
    for lines in (1, 7000, 29_999):
        assert content[tail_offset(path, lines):] == b"".join(
            b"line %06d\n" % i for i in range(30_000 - lines, 30_000))


# read_log (CRI records, rotation, follow): tests/test_logs.py


# --- cgroups: linux_resources -----------------------------------------------------------------

@pytest.mark.parametrize("millis, expected", [(0, 2), (1, 2), (2, 2), (250, 256), (1000, 1024), (1500, 1536)])
def test_shares(millis, expected):
    """cpu shares are 1024 per core and never below 2."""
    assert shares(millis) == expected


@pytest.mark.parametrize("millis, expected", [(250, 25_000), (1000, 100_000), (2500, 250_000), (10, 1000), (1, 1000)])
def test_quota(millis, expected):
    """CFS quota is the limit's share of a 100 ms period, never under 1 ms."""
    assert quota(millis) == expected


@pytest.mark.parametrize("requests, limits, pids, expected", [
    (None, None, None, {"cpu": {"shares": 2}}),
    ({"cpu": "250m"}, None, None, {"cpu": {"shares": 256}}),          # no cpu limit: no quota
    (None, {"cpu": "250m"}, None, {"cpu": {"shares": 256, "quota": 25_000, "period": 100_000}}),
    ({"cpu": "100m"}, {"cpu": "2"}, None, {"cpu": {"shares": 102, "quota": 200_000, "period": 100_000}}),
    (None, {"cpu": "5m"}, None, {"cpu": {"shares": 5, "quota": 1000, "period": 100_000}}),
    (None, {"memory": "64Mi"}, None, {"cpu": {"shares": 2}, "memory": {"limit": 2**26, "swap": 2**26}}),
    ({"memory": "32Mi"}, None, None, {"cpu": {"shares": 2}}),         # a memory request sets no limit
    (None, None, 1024, {"cpu": {"shares": 2}, "pids": {"limit": 1024}}),
    ({"cpu": "1", "memory": "1Gi"}, {"cpu": "1.5", "memory": "1G"}, 4096,
     {"cpu": {"shares": 1024, "quota": 150_000, "period": 100_000},
      "memory": {"limit": 10**9, "swap": 10**9}, "pids": {"limit": 4096}}),
])
def test_linux_resources(requests, limits, pids, expected):
    """Requests and limits map to OCI linux.resources the way Kubernetes maps them."""
    assert linux_resources(requests, limits, pids_limit=pids) == expected


def test_zero_cpu_limit_sets_no_quota():
    """limits.cpu "0" applies no CFS quota, as in Kubernetes, rather than throttling to 1%."""
    assert "quota" not in linux_resources(None, {"cpu": "0"})["cpu"]


# --- host.allocatable -------------------------------------------------------------------------

@pytest.mark.parametrize("capacity, reserved, expected", [
    ({"cpu": "4", "memory": "8Gi"}, {}, {"cpu": "4", "memory": "8Gi", "pods": "110"}),
    ({"cpu": "4", "memory": "8Gi", "pods": "50"}, {"cpu": "500m", "memory": "1Gi"},
     {"cpu": "3500m", "memory": "7Gi", "pods": "50"}),
    ({"cpu": "2", "memory": "24551212Ki"}, {"cpu": "1"}, {"cpu": "1", "memory": "24551212Ki", "pods": "110"}),
    ({"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}, {"cpu": "0", "memory": "0", "pods": "110"}),
    ({"cpu": "1", "memory": "1Gi"}, {"memory": "1000"}, {"cpu": "1", "memory": str(2**30 - 1000), "pods": "110"}),
])
def test_allocatable_is_capacity_minus_reserved(capacity, reserved, expected):
    """allocatable() subtracts the reservation per resource and never goes below zero."""
    assert allocatable(capacity, reserved) == expected


def test_observe_is_not_fooled_by_a_supervisor_finishing_between_its_checks(tmp_path, monkeypatch):
    """The supervisor writes the exit file and exits at any moment; whichever check comes
    first, observe must never report 'died without an exit status' for a clean exit."""
    from thingdoer.oci import shim

    (tmp_path / shim.INIT_PID).write_text("1\n")

    def supervisor_finishing(bundle):
        (bundle / shim.EXIT).write_text("0\n")  # it finishes right now...
        return None  # ...and is gone

    monkeypatch.setattr(shim, "supervisor_pid", supervisor_finishing)
    files = shim.observe(tmp_path)
    assert files.exited and files.exit_code == 0


def test_a_supervisor_is_known_by_pid_and_start_time(tmp_path):
    """A recorded pid names the supervisor only while that pid has the recorded start time:
    a reused pid is not it. (Matching on the command line failed while it was being exec'd.)"""
    import os
    from pathlib import Path

    from thingdoer.oci import shim

    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    start_time = stat[stat.rindex(")") + 2:].split()[19]
    (tmp_path / shim.SHIM_PID).write_text(f"{os.getpid()} {start_time}\n")
    assert shim.supervisor_pid(tmp_path) == os.getpid()
    (tmp_path / shim.SHIM_PID).write_text(f"{os.getpid()} {int(start_time) - 1}\n")
    assert shim.supervisor_pid(tmp_path) is None
    (tmp_path / shim.SHIM_PID).write_text("not a pid\n")
    assert shim.supervisor_pid(tmp_path) is None
