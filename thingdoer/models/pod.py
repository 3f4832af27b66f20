"""The Pod resource, shaped like Kubernetes core/v1 Pod for the fields thingdoer has."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from . import quantity
from .meta import ListMeta, Model, ObjectMeta, check_dns_label
from .phases import PENDING

RESOURCE_NAMES = ("cpu", "memory")
MIN_MEMORY_LIMIT = 6 * 2**20  # as Docker's floor: runc's init must fit under the limit
MIN_CPU_LIMIT_MILLIS = 10
PIDS_ANNOTATION, IO_ANNOTATION = "thingdoer.io/pids-limit", "thingdoer.io/io-max"
_IO_MAX = re.compile(r"^\s*\d+:\d+(\s+(rbps|wbps|riops|wiops)=\d+)+\s*$")


class EnvVar(Model):
    name: str
    value: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or "=" in value or "\0" in value:
            raise ValueError("must be a non-empty name without '=' (e.g. 'MY_VAR')")
        return value


class ContainerPort(Model):
    containerPort: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    hostPort: int | None = None


class ResourceRequirements(Model):
    """requests/limits keyed by resource name; values stay as the user wrote them."""

    requests: dict[str, str] | None = None
    limits: dict[str, str] | None = None

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, value):
        if value is None:
            return value
        if not isinstance(value, dict):
            raise ValueError("must be a map of resource name to quantity")
        checked = {}
        for name, amount in value.items():
            if name not in RESOURCE_NAMES:
                raise ValueError(f'{name}: Unsupported value: "{name}": supported resources: '
                                 + ", ".join(RESOURCE_NAMES))
            text = amount if isinstance(amount, str) else str(amount)
            try:
                parsed = quantity.parse(text)
            except ValueError as err:
                raise ValueError(f'{name}: Invalid value: "{amount}": {err}') from None
            if parsed < 0:
                raise ValueError(f'{name}: Invalid value: "{amount}": must be greater than or equal to 0')
            checked[name] = text
        return checked

    @model_validator(mode="after")
    def _requests_within_limits(self):
        for name in RESOURCE_NAMES:
            req = (self.requests or {}).get(name)
            lim = (self.limits or {}).get(name)
            if req is not None and lim is not None and quantity.parse(req) > quantity.parse(lim):
                raise ValueError(f'requests.{name}: Invalid value: "{req}": must be less than '
                                 f'or equal to {name} limit of {lim}')
        memory, cpu = (self.limits or {}).get("memory"), (self.limits or {}).get("cpu")
        if memory is not None and quantity.parse(memory) < MIN_MEMORY_LIMIT:
            raise ValueError(f'limits.memory: Invalid value: "{memory}": must be at least 6Mi, '
                             "the least a container starts in (runc's init runs inside the limit)")
        if cpu is not None and 0 < quantity.cpu_millis(cpu) < MIN_CPU_LIMIT_MILLIS:
            raise ValueError(f'limits.cpu: Invalid value: "{cpu}": must be 0 (no limit) or at least '
                             "10m, the kernel's smallest CFS quota (1 ms per 100 ms period)")
        return self

    def request(self, name: str) -> str | None:
        """The effective request: as Kubernetes, a limit with no request is also the request."""
        return (self.requests or {}).get(name) or (self.limits or {}).get(name)


class Container(Model):
    name: str
    image: str
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    workingDir: str | None = None
    ports: list[ContainerPort] | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)

    _name = field_validator("name")(classmethod(lambda cls, v: check_dns_label(v)))

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError("must be an image reference such as 'localhost/busybox:latest'")
        return value

    @field_validator("workingDir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value


class PodSpec(Model):
    containers: list[Container] = Field(min_length=1)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    nodeName: str | None = None
    nodeSelector: dict[str, str] | None = None
    terminationGracePeriodSeconds: int = Field(default=30, ge=0)
    hostname: str | None = None

    @model_validator(mode="after")
    def _unique_container_names(self):
        seen = set()
        for i, container in enumerate(self.containers):
            if container.name in seen:
                raise ValueError(f'containers[{i}].name: Duplicate value: "{container.name}"')
            seen.add(container.name)
        return self

    def total_requests(self) -> tuple[int, int]:
        """(millicores, bytes) the scheduler reserves for this pod."""
        cpu = sum(quantity.cpu_millis(c.resources.request("cpu") or "0") for c in self.containers)
        mem = sum(quantity.memory_bytes(c.resources.request("memory") or "0") for c in self.containers)
        return cpu, mem


class ContainerStateWaiting(Model):
    reason: str | None = None
    message: str | None = None


class ContainerStateRunning(Model):
    startedAt: str | None = None


class ContainerStateTerminated(Model):
    exitCode: int
    signal: int | None = None
    reason: str | None = None
    message: str | None = None
    startedAt: str | None = None
    finishedAt: str | None = None
    containerID: str | None = None


class ContainerState(Model):
    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(Model):
    name: str
    image: str
    imageID: str = ""
    containerID: str | None = None
    ready: bool = False
    started: bool | None = None
    restartCount: int = 0
    state: ContainerState = Field(default_factory=ContainerState)
    lastState: ContainerState | None = None


class PodCondition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None
    lastProbeTime: str | None = None


class PodStatus(Model):
    phase: str = PENDING
    reason: str | None = None
    message: str | None = None
    hostIP: str | None = None
    podIP: str | None = None
    startTime: str | None = None
    conditions: list[PodCondition] | None = None
    containerStatuses: list[ContainerStatus] | None = None


class Pod(Model):
    apiVersion: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus = Field(default_factory=PodStatus)

    @field_validator("metadata")
    @classmethod
    def _name(cls, meta: ObjectMeta) -> ObjectMeta:
        if meta.name:
            try:
                check_dns_label(meta.name)
            except ValueError as err:
                raise ValueError(f'name: Invalid value: "{meta.name}": {err}') from None
        annotations = meta.annotations or {}
        pids = annotations.get(PIDS_ANNOTATION)
        if pids is not None and (not pids.isdigit() or int(pids) < 1):
            raise ValueError(f'annotations[{PIDS_ANNOTATION}]: Invalid value: "{pids}": must be a '
                             "whole number of processes, at least 1")
        io = annotations.get(IO_ANNOTATION)
        if io is not None and not all(_IO_MAX.match(line) for line in io.split(";") if line.strip()):
            raise ValueError(f'annotations[{IO_ANNOTATION}]: Invalid value: "{io}": must be lines '
                             "'MAJ:MIN key=N ...' separated by ';', keys rbps wbps riops wiops")
        return meta

    @property
    def key(self) -> tuple[str, str]:
        return self.metadata.namespace or "default", self.metadata.name

    def container_status(self, name: str) -> ContainerStatus | None:
        return next((s for s in self.status.containerStatuses or [] if s.name == name), None)


class PodList(Model):
    apiVersion: Literal["v1"] = "v1"
    kind: Literal["PodList"] = "PodList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[Pod] = Field(default_factory=list)
