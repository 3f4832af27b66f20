"""Pod and container limits → what the kernel is told, mapped the way Kubernetes maps them (pure).

- cpu limit → CFS quota over a 100 ms period (``cpu.max`` on v2, ``cpu.cfs_quota_us`` and
  ``cpu.cfs_period_us`` on v1);
- cpu request → shares, 1024 per core, at least 2 (v1 ``cpu.shares``; on v2 converted to
  ``cpu.weight`` with runc's formula, ``v2_weight``); a container or pod without a cpu
  request gets the minimum, as Kubernetes' BestEffort pods do;
- memory limit → ``memory.max`` / ``memory.limit_in_bytes``, with swap off for limited pods
  (``memory.swap.max 0`` / ``memory.memsw.limit_in_bytes`` equal to the limit);
- pids → one limit per *pod* (``pids.max`` on the pod cgroup): the node's default
  (``--pids-limit``) unless the pod's ``thingdoer.io/pids-limit`` annotation asks for less;
- ``thingdoer.io/io-max`` (a thingdoer extension): ``MAJ:MIN rbps=N wbps=N riops=N wiops=N``,
  lines separated by ``;``, written to ``io.max`` (v1: ``blkio.throttle.*_device``).

Pod limits are the sum of the container limits where every container sets that limit; cpu
shares are the sum of the requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..models import quantity
from ..models.pod import IO_ANNOTATION, PIDS_ANNOTATION  # validated there, at the API

CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1000  # the kernel refuses quotas under 1 ms
MIN_SHARES, MAX_SHARES, SHARES_PER_CPU = 2, 262144, 1024
IO_KEYS = ("rbps", "wbps", "riops", "wiops")
_IO_LINE = re.compile(r"^\s*(\d+:\d+)((?:\s+(?:rbps|wbps|riops|wiops)=\d+)+)\s*$")


@dataclass(frozen=True)
class IoMax:
    device: str  # MAJ:MIN
    limits: dict[str, int] = field(default_factory=dict)  # rbps/wbps/riops/wiops → value


@dataclass(frozen=True)
class Limits:
    """One cgroup's limits in kernel units; None means no limit."""

    cpu_shares: int = MIN_SHARES
    cpu_quota_us: int | None = None
    cpu_period_us: int = CFS_PERIOD_US
    memory_max: int | None = None  # swap is off whenever this is set
    pids_max: int | None = None
    io_max: tuple[IoMax, ...] = ()


def shares(cpu_request_millis: int) -> int:
    return min(MAX_SHARES, max(MIN_SHARES, cpu_request_millis * SHARES_PER_CPU // 1000))


def quota(cpu_limit_millis: int) -> int:
    return max(MIN_QUOTA_US, cpu_limit_millis * CFS_PERIOD_US // 1000)


def v2_weight(cpu_shares: int) -> int:
    """runc's and Kubernetes' conversion: shares [2, 262144] → weight [1, 10000]."""
    return 1 + ((cpu_shares - 2) * 9999) // 262142


def parse_io_max(text: str) -> tuple[IoMax, ...]:
    """``8:0 rbps=1048576 wiops=100; 8:16 wbps=1000`` → IoMax per device; ``ValueError``
    says what is wrong."""
    out = []
    for line in filter(str.strip, text.split(";")):
        match = _IO_LINE.match(line)
        if not match:
            raise ValueError(f"{line.strip()!r} is not 'MAJ:MIN key=N ...' with keys "
                             + ", ".join(IO_KEYS))
        pairs = dict(p.split("=") for p in match.group(2).split())
        out.append(IoMax(match.group(1), {k: int(v) for k, v in pairs.items()}))
    return tuple(out)


def container_limits(requests: dict[str, str] | None, limits: dict[str, str] | None) -> Limits:
    requests, limits = requests or {}, limits or {}
    cpu_request = requests.get("cpu") or limits.get("cpu")
    cpu_limit = quantity.cpu_millis(limits["cpu"]) if limits.get("cpu") else 0
    return Limits(
        cpu_shares=shares(quantity.cpu_millis(cpu_request) if cpu_request else 0),
        cpu_quota_us=quota(cpu_limit) if cpu_limit > 0 else None,  # 0 means no limit
        memory_max=quantity.memory_bytes(limits["memory"]) if "memory" in limits else None)


def pod_limits(containers: list[tuple[dict | None, dict | None]], annotations: dict | None,
               pids_default: int | None) -> Limits:
    """The pod cgroup's limits from its containers' (requests, limits) and annotations."""
    each = [container_limits(r, lim) for r, lim in containers]
    annotations = annotations or {}
    pids = pids_default
    if PIDS_ANNOTATION in annotations:
        asked = int(annotations[PIDS_ANNOTATION])
        pids = min(asked, pids) if pids else asked
    return Limits(
        cpu_shares=min(MAX_SHARES, max(MIN_SHARES, sum(c.cpu_shares for c in each))),
        cpu_quota_us=(sum(c.cpu_quota_us for c in each)
                      if each and all(c.cpu_quota_us for c in each) else None),
        memory_max=(sum(c.memory_max for c in each)
                    if each and all(c.memory_max is not None for c in each) else None),
        pids_max=pids,
        io_max=parse_io_max(annotations.get(IO_ANNOTATION, "")))


def linux_resources(requests: dict[str, str] | None, limits: dict[str, str] | None,
                    *, pids_limit: int | None = None) -> dict:
    """A container's OCI ``linux.resources`` (runc writes it to the container's cgroup). The
    node limits pids per pod (``pod_limits``); ``pids_limit`` adds a per-container one."""
    lim = container_limits(requests, limits)
    cpu: dict = {"shares": lim.cpu_shares}
    if lim.cpu_quota_us:
        cpu["quota"], cpu["period"] = lim.cpu_quota_us, lim.cpu_period_us
    resources: dict = {"cpu": cpu}
    if lim.memory_max is not None:
        resources["memory"] = {"limit": lim.memory_max, "swap": lim.memory_max}
    if pids_limit:
        resources["pids"] = {"limit": pids_limit}
    return resources
