"""What the node sees of a pod's containers, and the pod status that follows from it (pure).

``Observed`` is read from disk (the bundle dir, see ``bundles.py``), never from memory alone,
so a restarted agent reports exactly what a running one would.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import (FAILED, PENDING, RUNNING, SUCCEEDED, ContainerState, ContainerStateRunning,
                      ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
                      PodCondition, PodStatus)

CREATED, RUNNING_STATE, EXITED = "created", "running", "exited"
START_ERROR_EXIT = 128  # what Kubernetes reports for a container that never started


@dataclass(frozen=True)
class Observed:
    name: str
    container_id: str
    image_id: str
    state: str  # created | running | exited
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    start_error: str | None = None  # the runtime's own words when the process never started
    oom_killed: bool = False  # the run ended in an OOM kill (``oom.py`` keeps that on disk)


def _terminated(obs: Observed) -> ContainerStateTerminated:
    if obs.start_error is not None:
        return ContainerStateTerminated(exitCode=START_ERROR_EXIT, reason="StartError",
                                        message=obs.start_error, finishedAt=obs.finished_at,
                                        containerID=obs.container_id)
    code = obs.exit_code if obs.exit_code is not None else 255
    return ContainerStateTerminated(
        exitCode=code, signal=code - 128 if 128 < code <= 128 + 64 else None,
        reason="Completed" if code == 0 else "OOMKilled" if obs.oom_killed else "Error",
        startedAt=obs.started_at,
        finishedAt=obs.finished_at, containerID=obs.container_id)


def container_status(image: str, obs: Observed | None, waiting_reason: str = "ContainerCreating",
                     waiting_message: str | None = None, name: str = "", *, restarts: int = 0,
                     last: ContainerStateTerminated | None = None,
                     backing_off: float | None = None) -> ContainerStatus:
    """``restarts``/``last``: the container's earlier runs; ``backing_off``: the back-off before
    the exited container ``obs`` is started again (None: it stays exited). The status holds
    the back-off, not the time left, so it does not change while the node waits."""
    last_state = ContainerState(terminated=last) if last else None
    if obs is None:
        return ContainerStatus(name=name, image=image, restartCount=restarts, lastState=last_state,
                               state=ContainerState(waiting=ContainerStateWaiting(
                                   reason=waiting_reason, message=waiting_message)))
    if obs.state == EXITED and backing_off is not None:
        state = ContainerState(waiting=ContainerStateWaiting(
            reason="CrashLoopBackOff",
            message=f"back-off {backing_off:g}s restarting container {obs.name}"))
        last_state = ContainerState(terminated=_terminated(obs))
    elif obs.state == EXITED:
        state = ContainerState(terminated=_terminated(obs))
    elif obs.state == RUNNING_STATE:
        state = ContainerState(running=ContainerStateRunning(startedAt=obs.started_at))
    else:
        state = ContainerState(waiting=ContainerStateWaiting(reason="ContainerCreating"))
    return ContainerStatus(name=obs.name, image=image, imageID=obs.image_id,
                           containerID=f"runc://{obs.container_id}", ready=obs.state == RUNNING_STATE,
                           started=obs.state == RUNNING_STATE, state=state, restartCount=restarts,
                           lastState=last_state)


def terminated_state(obs: Observed) -> ContainerStateTerminated:
    """How an exited container is remembered once it has been restarted."""
    return _terminated(obs)


def pod_phase(statuses: list[ContainerStatus]) -> str:
    """Running while any container runs or is waiting to be restarted; once all have exited
    for good, Succeeded if every one exited 0, else Failed."""
    if any(s.state.running or (s.state.waiting and s.restartCount) or
           (s.state.waiting and s.state.waiting.reason == "CrashLoopBackOff") for s in statuses):
        return RUNNING
    if statuses and all(s.state.terminated for s in statuses):
        return SUCCEEDED if all(s.state.terminated.exitCode == 0 for s in statuses) else FAILED
    if any(s.state.terminated for s in statuses):
        return RUNNING  # some exited, others still starting: the pod is under way
    return PENDING


def desired_status(pod: Pod, statuses: list[ContainerStatus], host_ip: str, started: str) -> PodStatus:
    """The status the node reports for ``pod``, keeping what the scheduler wrote."""
    phase = pod_phase(statuses)
    ready = "True" if statuses and all(s.ready for s in statuses) else "False"
    conditions = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
    conditions += [PodCondition(type="Initialized", status="True"),
                   PodCondition(type="ContainersReady", status=ready),
                   PodCondition(type="Ready", status=ready)]
    return PodStatus(phase=phase, hostIP=host_ip, podIP=pod.status.podIP, startTime=started,
                     conditions=conditions, containerStatuses=statuses)


def same_status(a: PodStatus, b: PodStatus) -> bool:
    """Equal but for condition timestamps (which would otherwise make every write new)."""
    def strip(s: PodStatus) -> dict:
        d = s.dump()
        for c in d.get("conditions", []):
            c.pop("lastTransitionTime", None)
        return d
    return strip(a) == strip(b)
