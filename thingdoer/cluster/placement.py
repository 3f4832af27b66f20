"""Where a pod goes: a pure decision over a snapshot of nodes and the pods bound to them.

A node is feasible when it is Ready, schedulable, matches the pod's ``nodeSelector`` and its
allocatable cpu and memory minus the requests of the non-terminal pods bound to it cover the
pod's requests. Among feasible nodes the least allocated one wins (spreading), ties broken by
name so the decision is deterministic. When nothing fits, the message says why per node, in
the words ``kubectl describe`` users know: ``0/3 nodes are available: 2 Insufficient cpu, ...``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..models import Node, Pod, is_terminal


@dataclass(frozen=True)
class Decision:
    node: str | None
    message: str = ""


def requested_on(node: str, pods: list[Pod]) -> tuple[int, int]:
    """(millicores, bytes) already requested on ``node`` by pods that still hold resources."""
    cpu = mem = 0
    for pod in pods:
        if pod.spec.nodeName == node and not is_terminal(pod.status.phase):
            pod_cpu, pod_mem = pod.spec.total_requests()
            cpu, mem = cpu + pod_cpu, mem + pod_mem
    return cpu, mem


def _reasons(pod: Pod, node: Node, used: tuple[int, int]) -> list[str]:
    if not node.ready:
        return ["node(s) were not ready"]
    if node.spec.unschedulable:
        return ["node(s) were unschedulable"]
    labels = node.metadata.labels or {}
    if any(labels.get(k) != v for k, v in (pod.spec.nodeSelector or {}).items()):
        return ["node(s) didn't match Pod's node affinity/selector"]
    want_cpu, want_mem = pod.spec.total_requests()
    alloc_cpu, alloc_mem = node.allocatable()
    reasons = []
    # Like Kubernetes, a resource the pod does not request is not checked (an overcommitted
    # node still takes a pod that asks for none of it).
    if want_cpu and used[0] + want_cpu > alloc_cpu:
        reasons.append("Insufficient cpu")
    if want_mem and used[1] + want_mem > alloc_mem:
        reasons.append("Insufficient memory")
    return reasons


def _free_share(pod: Pod, node: Node, used: tuple[int, int]) -> float:
    """Mean fraction of cpu and memory left free after placing the pod (higher = emptier)."""
    want_cpu, want_mem = pod.spec.total_requests()
    alloc_cpu, alloc_mem = node.allocatable()
    cpu = (alloc_cpu - used[0] - want_cpu) / alloc_cpu if alloc_cpu else 0.0
    mem = (alloc_mem - used[1] - want_mem) / alloc_mem if alloc_mem else 0.0
    return (cpu + mem) / 2


def place(pod: Pod, nodes: list[Node], pods: list[Pod]) -> Decision:
    if not nodes:
        return Decision(None, "0/0 nodes are available: no nodes are registered")
    failures: Counter[str] = Counter()
    best: tuple[float, str] | None = None
    for node in nodes:
        used = requested_on(node.metadata.name, pods)
        reasons = _reasons(pod, node, used)
        if reasons:
            failures.update(reasons)
            continue
        score = (_free_share(pod, node, used), node.metadata.name)
        if best is None or score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
            best = score
    if best is not None:
        return Decision(best[1])
    detail = ", ".join(f"{n} {r}" for r, n in sorted(failures.items()))
    return Decision(None, f"0/{len(nodes)} nodes are available: {detail}.")
