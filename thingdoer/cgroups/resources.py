"""Container limits → OCI ``linux.resources``, mapped the way Kubernetes maps them (pure).

- cpu limit → CFS quota over a 100 ms period (runc writes ``cpu.max`` on v2,
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` on v1);
- cpu request → shares, 1024 per core, at least 2 (runc converts to ``cpu.weight`` on v2);
- memory limit → limit, with swap equal to it (no swap for limited containers);
- pids → the node's per-container limit, so a fork bomb cannot take the node.
"""

from __future__ import annotations

from ..models import quantity

CFS_PERIOD_US = 100_000
MIN_SHARES, SHARES_PER_CPU = 2, 1024


def shares(cpu_request_millis: int) -> int:
    return max(MIN_SHARES, cpu_request_millis * SHARES_PER_CPU // 1000)


def quota(cpu_limit_millis: int) -> int:
    # The kernel refuses quotas under 1 ms.
    return max(1000, cpu_limit_millis * CFS_PERIOD_US // 1000)


def linux_resources(requests: dict[str, str] | None, limits: dict[str, str] | None,
                    *, pids_limit: int | None = None) -> dict:
    requests, limits = requests or {}, limits or {}
    cpu: dict = {}
    cpu_request = requests.get("cpu") or limits.get("cpu")
    cpu["shares"] = shares(quantity.cpu_millis(cpu_request) if cpu_request else 0)
    if limits.get("cpu") and quantity.cpu_millis(limits["cpu"]) > 0:  # 0 means no limit
        cpu["quota"], cpu["period"] = quota(quantity.cpu_millis(limits["cpu"])), CFS_PERIOD_US
    resources: dict = {"cpu": cpu}
    if "memory" in limits:
        limit = quantity.memory_bytes(limits["memory"])
        resources["memory"] = {"limit": limit, "swap": limit}
    if pids_limit:
        resources["pids"] = {"limit": pids_limit}
    return resources
