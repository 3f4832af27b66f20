"""Pure unit tests of the control plane's decisions: placement, the reaper's marks, pending order."""

import pytest

from thingdoer.cluster.informer import pod_key
from thingdoer.cluster.placement import place, requested_on
from thingdoer.cluster.reaper import NODE_LOST, mark_lost, mark_not_ready
from thingdoer.cluster.scheduler import Scheduler
from thingdoer.models import FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, Node, Pod


def make_pod(name: str = "p", cpu: str | None = None, memory: str | None = None, *, node: str | None = None,
             phase: str = PENDING, selector: dict | None = None, namespace: str = "default",
             created: str | None = None, deleting: bool = False) -> Pod:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    meta = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return Pod.model_validate({
        "metadata": meta,
        "spec": {"containers": [{"name": "main", "image": "busybox", "resources": {"requests": requests}}],
                 "nodeName": node, "nodeSelector": selector},
        "status": {"phase": phase}})


def make_node(name: str, cpu: str = "4", memory: str = "8Gi", *, ready: str | None = "True",
              unschedulable: bool = False, labels: dict | None = None) -> Node:
    conditions = [{"type": "Ready", "status": ready}] if ready else []
    return Node.model_validate({
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable or None},
        "status": {"allocatable": {"cpu": cpu, "memory": memory}, "conditions": conditions}})


# --- place() ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cpu, memory, fits", [
    ("1", "1Gi", True),
    ("4", "8Gi", True),            # exactly the allocatable fits
    ("4001m", None, False),        # one millicore over
    (None, "8193Mi", False),       # one MiB over
    (None, None, True),            # best effort
])
def test_fits_on_an_empty_node(cpu, memory, fits):
    """A pod fits when its requests are within the node's allocatable cpu and memory."""
    decision = place(make_pod(cpu=cpu, memory=memory), [make_node("a")], [])
    assert decision.node == ("a" if fits else None)
    assert bool(decision.message) is not fits


@pytest.mark.parametrize("used_cpu, used_mem, cpu, memory, reason", [
    ("3", None, "1001m", None, "Insufficient cpu"),
    (None, "7Gi", None, "2Gi", "Insufficient memory"),
])
def test_existing_requests_reduce_what_is_free(used_cpu, used_mem, cpu, memory, reason):
    """Requests of pods already bound to the node count against its allocatable."""
    bound = make_pod("old", used_cpu, used_mem, node="a", phase=RUNNING)
    decision = place(make_pod(cpu=cpu, memory=memory), [make_node("a")], [bound])
    assert decision.node is None
    assert decision.message == f"0/1 nodes are available: 1 {reason}."
    # Without the bound pod it would fit: the refusal is due to usage.
    assert place(make_pod(cpu=cpu, memory=memory), [make_node("a")], []).node == "a"


def test_limit_only_pod_counts_its_limit():
    """A pod with only limits requests them, as Kubernetes defaults requests to limits."""
    pod = Pod.model_validate({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "main", "image": "busybox", "resources": {"limits": {"cpu": "5"}}}]}})
    assert place(pod, [make_node("a", cpu="4")], []).message == "0/1 nodes are available: 1 Insufficient cpu."


@pytest.mark.parametrize("phase, counts", [
    (PENDING, True), (RUNNING, True), (UNKNOWN, True), (SUCCEEDED, False), (FAILED, False),
])
def test_terminal_pods_free_their_resources(phase, counts):
    """Succeeded and Failed pods bound to a node no longer count toward its usage."""
    bound = make_pod("old", "4", node="a", phase=phase)
    assert requested_on("a", [bound]) == ((4000, 0) if counts else (0, 0))
    assert (place(make_pod(cpu="1"), [make_node("a")], [bound]).node is None) is counts


def test_pods_on_other_nodes_or_unbound_do_not_count():
    """Only pods bound to the node itself use its resources."""
    pods = [make_pod("elsewhere", "4", node="b", phase=RUNNING), make_pod("unbound", "4")]
    assert requested_on("a", pods) == (0, 0)
    assert place(make_pod(cpu="4"), [make_node("a")], pods).node == "a"


def test_requested_on_sums_every_live_pod():
    """requested_on() adds the cpu and memory requests of all live pods on the node."""
    pods = [make_pod("x", "250m", "64Mi", node="a", phase=RUNNING),
            make_pod("y", "1", "1Gi", node="a"),
            make_pod("z", "2", "2Gi", node="a", phase=SUCCEEDED)]
    assert requested_on("a", pods) == (1250, 64 * 2**20 + 2**30)


@pytest.mark.parametrize("node, reason", [
    (make_node("a", ready="False"), "node(s) were not ready"),
    (make_node("a", ready="Unknown"), "node(s) were not ready"),
    (make_node("a", ready=None), "node(s) were not ready"),
    (make_node("a", unschedulable=True), "node(s) were unschedulable"),
    (make_node("a", labels={"disk": "hdd"}), "node(s) didn't match Pod's node affinity/selector"),
    (make_node("a"), "node(s) didn't match Pod's node affinity/selector"),
])
def test_infeasible_nodes_are_skipped_with_a_reason(node, reason):
    """Not-ready, unschedulable and selector-mismatched nodes are never chosen, whatever their room."""
    decision = place(make_pod(selector={"disk": "ssd"}), [node], [])
    assert decision.node is None
    assert decision.message == f"0/1 nodes are available: 1 {reason}."


def test_node_selector_picks_the_matching_node():
    """nodeSelector restricts placement to nodes with every selected label."""
    nodes = [make_node("a", labels={"disk": "hdd"}), make_node("b", labels={"disk": "ssd", "zone": "x"}),
             make_node("c", labels={"zone": "x"})]
    assert place(make_pod(selector={"disk": "ssd", "zone": "x"}), nodes, []).node == "b"


def test_infeasible_node_is_skipped_for_a_feasible_one():
    """A bigger but not-ready or unschedulable node loses to a small ready one."""
    nodes = [make_node("big", cpu="64", ready="Unknown"), make_node("cordoned", cpu="64", unschedulable=True),
             make_node("small", cpu="1")]
    assert place(make_pod(cpu="500m"), nodes, []).node == "small"


def test_message_counts_each_reason_across_nodes():
    """The refusal counts nodes per reason, a node short of both counting under both."""
    nodes = [make_node("a", cpu="1", memory="1Gi"), make_node("b", cpu="1", memory="16Gi"),
             make_node("c", cpu="8", memory="1Gi"), make_node("d", ready="False"),
             make_node("e", unschedulable=True)]
    decision = place(make_pod(cpu="2", memory="2Gi"), nodes, [])
    assert decision.node is None
    assert decision.message == ("0/5 nodes are available: 2 Insufficient cpu, 2 Insufficient memory, "
                                "1 node(s) were not ready, 1 node(s) were unschedulable.")


def test_no_nodes_at_all():
    """With no nodes registered the message says so."""
    assert place(make_pod(), [], []).message == "0/0 nodes are available: no nodes are registered"


def test_least_allocated_node_wins():
    """Among feasible nodes the one left with the largest free share is chosen (spreading)."""
    nodes = [make_node("a"), make_node("b"), make_node("c")]
    pods = [make_pod("x", "3", "6Gi", node="a", phase=RUNNING), make_pod("y", "1", "2Gi", node="b", phase=RUNNING)]
    assert place(make_pod(cpu="500m", memory="512Mi"), nodes, pods).node == "c"
    pods.append(make_pod("z", "2", "4Gi", node="c", phase=RUNNING))
    assert place(make_pod(cpu="500m", memory="512Mi"), nodes, pods).node == "b"


def test_spreading_is_relative_to_node_size():
    """A big node with the same absolute use is emptier than a small one and wins."""
    nodes = [make_node("small", cpu="2", memory="2Gi"), make_node("large", cpu="16", memory="32Gi")]
    pods = [make_pod("x", "1", "1Gi", node="small"), make_pod("y", "1", "1Gi", node="large")]
    assert place(make_pod(cpu="100m"), nodes, pods).node == "large"


@pytest.mark.parametrize("order", [["b", "a", "c"], ["c", "b", "a"], ["a", "b", "c"]])
def test_ties_break_by_name(order):
    """Equally free nodes tie-break to the smallest name, whatever their order in the list."""
    assert place(make_pod(cpu="1"), [make_node(n) for n in order], []).node == "a"


def test_consecutive_placements_spread():
    """Placing pods one after another, each accounting for the last, alternates across equal nodes."""
    nodes, pods = [make_node("a"), make_node("b")], []
    chosen = []
    for i in range(4):
        pod = make_pod(f"p{i}", "1", "1Gi")
        pod.spec.nodeName = place(pod, nodes, pods).node
        pods.append(pod)
        chosen.append(pod.spec.nodeName)
    assert chosen == ["a", "b", "a", "b"]


# --- reaper helpers ---------------------------------------------------------------------------

def test_mark_not_ready_sets_ready_unknown_once():
    """mark_not_ready sets Ready=Unknown keeping other conditions and the last heartbeat; again is a no-op."""
    node = Node.model_validate({"metadata": {"name": "a"}, "status": {"conditions": [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-01-01T00:00:00Z"}]}})
    assert mark_not_ready(node) is True
    ready = node.condition("Ready")
    assert (ready.status, ready.reason) == ("Unknown", "NodeStatusUnknown")
    assert ready.lastHeartbeatTime == "2024-01-01T00:00:00Z" and ready.lastTransitionTime
    assert node.condition("MemoryPressure").status == "False"
    assert not node.ready
    before = node.dump()
    assert mark_not_ready(node) is False
    assert node.dump() == before
    assert [c.type for c in node.status.conditions].count("Ready") == 1


def test_mark_not_ready_on_a_node_without_conditions():
    """A node that never reported gets a Ready=Unknown condition too."""
    node = Node.model_validate({"metadata": {"name": "a"}})
    assert mark_not_ready(node) is True
    assert node.condition("Ready").status == "Unknown"
    assert node.condition("Ready").lastHeartbeatTime is None


@pytest.mark.parametrize("phase", [PENDING, RUNNING, UNKNOWN])
def test_mark_lost_fails_live_pods_once(phase):
    """mark_lost turns a live pod Failed with reason NodeLost naming the node; again is a no-op."""
    pod = make_pod(node="a", phase=phase)
    assert mark_lost(pod, "a") is True
    assert (pod.status.phase, pod.status.reason) == (FAILED, NODE_LOST)
    assert "node a" in pod.status.message
    before = pod.dump()
    assert mark_lost(pod, "a") is False
    assert pod.dump() == before


@pytest.mark.parametrize("phase", [SUCCEEDED, FAILED])
def test_mark_lost_leaves_terminal_pods_alone(phase):
    """A pod that already ended keeps its phase, reason and message."""
    pod = make_pod(node="a", phase=phase)
    before = pod.dump()
    assert mark_lost(pod, "a") is False
    assert pod.dump() == before


# --- Scheduler.pending ------------------------------------------------------------------------

def test_pending_is_unbound_live_pods_oldest_first():
    """pending() lists unbound, non-terminal, not-deleting pods by creation time, then namespace/name."""
    scheduler = Scheduler(pods=None, nodes=None)
    pods = [
        make_pod("late", created="2024-01-01T00:00:09Z"),
        make_pod("early", created="2024-01-01T00:00:01Z"),
        make_pod("b", created="2024-01-01T00:00:05Z"),
        make_pod("a", created="2024-01-01T00:00:05Z", namespace="zz"),
        make_pod("a", created="2024-01-01T00:00:05Z"),
        make_pod("never-stamped"),
        make_pod("bound", created="2024-01-01T00:00:00Z", node="n1"),
        make_pod("done", created="2024-01-01T00:00:00Z", phase=SUCCEEDED),
        make_pod("failed", created="2024-01-01T00:00:00Z", phase=FAILED),
        make_pod("deleting", created="2024-01-01T00:00:00Z", deleting=True),
    ]
    scheduler.pod_cache.objects = {pod_key(p): p for p in pods}
    assert [pod_key(p) for p in scheduler.pending()] == [
        "default/never-stamped", "default/early", "default/a", "default/b", "zz/a", "default/late"]


def test_a_resource_the_pod_does_not_request_is_not_checked():
    """As Kubernetes: an overcommitted node (more cpu bound than it has) still takes a pod that
    requests no cpu, if its memory fits."""
    node = make_node("full", cpu="1", memory="8Gi")
    bound = make_pod("hog", cpu="2", memory="1Gi", node="full")
    assert place(make_pod("light", memory="1Gi"), [node], [bound]).node == "full"
    assert place(make_pod("heavy", cpu="1", memory="1Gi"), [node], [bound]).node is None
