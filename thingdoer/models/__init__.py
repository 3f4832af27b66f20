"""Resources (Pod, Node) shaped like Kubernetes core/v1, quantities, and pod phase rules.

Pure data: nothing here does I/O. Every other layer speaks in these types.
"""

from .meta import ListMeta, ObjectMeta, new_uid, now, parse_time
from .node import Node, NodeAddress, NodeCondition, NodeList, NodeStatus
from .phases import FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, can_move, is_terminal
from .pod import (Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
                  ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodList, PodStatus)
from .validation import admit_pod, dump_json, parse_object

__all__ = [
    "Container", "ContainerState", "ContainerStateRunning", "ContainerStateTerminated",
    "ContainerStateWaiting", "ContainerStatus", "FAILED", "ListMeta", "Node", "NodeAddress",
    "NodeCondition", "NodeList", "NodeStatus", "ObjectMeta", "PENDING", "Pod", "PodCondition",
    "PodList", "PodStatus", "RUNNING", "SUCCEEDED", "UNKNOWN", "admit_pod", "can_move",
    "dump_json", "is_terminal", "new_uid", "now", "parse_object", "parse_time",
]
