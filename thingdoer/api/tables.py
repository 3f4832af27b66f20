"""How pods and nodes look as rows: the columns of ``kubectl get`` and ``thingdoer get``.

apid serves these as ``meta.k8s.io/v1`` Tables when a client asks for one (kubectl does), and
the CLI prints the same rows, so both show the same thing. Pure functions of the objects.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..models import Node, Pod, parse_time

POD_COLUMNS = [  # (name, type, priority: 0 = always, 1 = -o wide, description)
    ("Name", "string", 0, "Name of the pod"),
    ("Ready", "string", 0, "Ready containers / all containers"),
    ("Status", "string", 0, "Phase, or the reason the pod is in it"),
    ("Restarts", "string", 0, "Container restarts"),
    ("Age", "string", 0, "Time since creation"),
    ("IP", "string", 1, "Pod IP"),
    ("Node", "string", 1, "Node the pod is bound to"),
]

NODE_COLUMNS = [
    ("Name", "string", 0, "Name of the node"),
    ("Status", "string", 0, "Ready or NotReady"),
    ("Roles", "string", 0, "Node roles"),
    ("Age", "string", 0, "Time since registration"),
    ("Version", "string", 0, "Agent version"),
    ("Internal-IP", "string", 1, "Address of the node agent"),
    ("CPU", "string", 1, "Allocatable cpu"),
    ("Memory", "string", 1, "Allocatable memory"),
    ("OS-Image", "string", 1, "Operating system"),
    ("Kernel-Version", "string", 1, "Kernel"),
    ("Container-Runtime", "string", 1, "OCI runtime"),
]


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes' short duration: ``42s``, ``5m10s``, ``3h``, ``2d``."""
    if not timestamp:
        return "<unknown>"
    seconds = int(((now or datetime.now(timezone.utc)) - parse_time(timestamp)).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def pod_status_text(pod: Pod) -> str:
    """The STATUS column: what a person wants to know first about the pod."""
    if pod.metadata.deletionTimestamp:
        return "Terminating"
    if pod.status.reason:
        return pod.status.reason
    for status in pod.status.containerStatuses or []:
        state = status.state
        if state.terminated and state.terminated.reason and pod.status.phase != "Running":
            return state.terminated.reason
        if state.waiting and state.waiting.reason:
            return state.waiting.reason
    return pod.status.phase


def pod_row(pod: Pod) -> list:
    statuses = pod.status.containerStatuses or []
    ready = sum(1 for s in statuses if s.ready)
    return [pod.metadata.name, f"{ready}/{len(pod.spec.containers)}", pod_status_text(pod),
            str(sum(s.restartCount for s in statuses)), age(pod.metadata.creationTimestamp),
            pod.status.podIP or "<none>", pod.spec.nodeName or "<none>"]


def node_status_text(node: Node) -> str:
    text = "Ready" if node.ready else "NotReady"
    return text + (",SchedulingDisabled" if node.spec.unschedulable else "")


def node_row(node: Node) -> list:
    info = node.status.nodeInfo
    alloc = node.status.allocatable
    return [node.metadata.name, node_status_text(node), "<none>",
            age(node.metadata.creationTimestamp), info.kubeletVersion if info else "",
            node.address() or "<none>", alloc.get("cpu", ""), alloc.get("memory", ""),
            info.osImage if info else "", info.kernelVersion if info else "",
            info.containerRuntimeVersion if info else ""]


INCLUDE_OBJECT = ("None", "Metadata", "Object")  # the ``includeObject`` query parameter


def table(kind: str, objects: list, *, resource_version: str = "", include_object: str = "Metadata") -> dict:
    """A ``meta.k8s.io/v1`` Table of ``kind`` ("Pod" or "Node") objects.

    Each row carries its object as Kubernetes does for ``include_object``: only its metadata
    (the default), the whole object (kubectl asks for it to ``--sort-by`` a field), or nothing."""
    columns, row_of = (NODE_COLUMNS, node_row) if kind == "Node" else (POD_COLUMNS, pod_row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name" else "",
                               "description": d, "priority": p} for n, t, p, d in columns],
        "rows": [_row(row_of(o), o, include_object) for o in objects],
    }


def _row(cells: list, obj, include_object: str) -> dict:
    if include_object == "None":
        return {"cells": cells}
    if include_object == "Object":
        return {"cells": cells, "object": obj.dump()}
    return {"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                       "metadata": obj.metadata.dump()}}
