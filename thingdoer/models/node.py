"""The Node resource, shaped like Kubernetes core/v1 Node."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..errors import Unavailable
from . import quantity
from .meta import ListMeta, Model, ObjectMeta, check_dns_subdomain


class NodeCondition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastHeartbeatTime: str | None = None
    lastTransitionTime: str | None = None


class NodeAddress(Model):
    type: str
    address: str


class DaemonEndpoint(Model):
    Port: int


class NodeDaemonEndpoints(Model):
    kubeletEndpoint: DaemonEndpoint | None = None


class NodeSystemInfo(Model):
    machineID: str = ""
    systemUUID: str = ""
    bootID: str = ""
    kernelVersion: str = ""
    osImage: str = ""
    containerRuntimeVersion: str = ""
    kubeletVersion: str = ""
    kubeProxyVersion: str = ""
    operatingSystem: str = "linux"
    architecture: str = ""


class NodeSpec(Model):
    unschedulable: bool | None = None
    podCIDR: str | None = None


class NodeStatus(Model):
    capacity: dict[str, str] = Field(default_factory=dict)
    allocatable: dict[str, str] = Field(default_factory=dict)
    conditions: list[NodeCondition] = Field(default_factory=list)
    addresses: list[NodeAddress] = Field(default_factory=list)
    daemonEndpoints: NodeDaemonEndpoints | None = None
    nodeInfo: NodeSystemInfo | None = None


class Node(Model):
    apiVersion: Literal["v1"] = "v1"
    kind: Literal["Node"] = "Node"
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    @field_validator("metadata")
    @classmethod
    def _name(cls, meta: ObjectMeta) -> ObjectMeta:
        try:
            check_dns_subdomain(meta.name)
        except ValueError as err:
            raise ValueError(f'name: Invalid value: "{meta.name}": {err}') from None
        return meta

    def condition(self, kind: str) -> NodeCondition | None:
        return next((c for c in self.status.conditions if c.type == kind), None)

    @property
    def ready(self) -> bool:
        cond = self.condition("Ready")
        return cond is not None and cond.status == "True"

    def allocatable(self) -> tuple[int, int]:
        """(millicores, bytes) pods may request on this node."""
        alloc = self.status.allocatable
        return (quantity.cpu_millis(alloc.get("cpu", "0")),
                quantity.memory_bytes(alloc.get("memory", "0")))

    def address(self, kind: str = "InternalIP") -> str | None:
        return next((a.address for a in self.status.addresses if a.type == kind), None)

    def agent_url(self) -> str:
        """Base URL of the node agent's HTTP API: InternalIP and the kubelet endpoint port."""
        address, endpoints = self.address(), self.status.daemonEndpoints
        if not address or not endpoints or not endpoints.kubeletEndpoint:
            raise Unavailable(f"node {self.metadata.name} publishes no agent address")
        return f"http://{address}:{endpoints.kubeletEndpoint.Port}"


class NodeList(Model):
    apiVersion: Literal["v1"] = "v1"
    kind: Literal["NodeList"] = "NodeList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[Node] = Field(default_factory=list)
