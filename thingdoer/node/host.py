"""Facts about this host that its Node reports: capacity, kernel, OS, runtime."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .. import __version__
from ..models import quantity
from ..models.node import NodeSystemInfo


def cpu_capacity() -> str:
    return str(len(os.sched_getaffinity(0)))


def memory_capacity() -> str:
    """MemTotal as Kubernetes reports it (``24551212Ki``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1])}Ki"
    raise OSError("MemTotal missing from /proc/meminfo")


def allocatable(capacity: dict[str, str], reserved: dict[str, str]) -> dict[str, str]:
    """capacity − reserved, per resource, never below zero."""
    cpu = max(0, quantity.cpu_millis(capacity["cpu"]) - quantity.cpu_millis(reserved.get("cpu", "0")))
    mem = max(0, quantity.memory_bytes(capacity["memory"])
              - quantity.memory_bytes(reserved.get("memory", "0")))
    return {"cpu": quantity.format_cpu(cpu), "memory": quantity.format_memory(mem),
            "pods": capacity.get("pods", "110")}


def os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def system_info(runtime_version: str) -> NodeSystemInfo:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    machine_id = ""
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        pass
    return NodeSystemInfo(machineID=machine_id, kernelVersion=platform.release(), osImage=os_image(),
                          containerRuntimeVersion=runtime_version,
                          kubeletVersion=f"v1.32.0+thingdoer-{__version__}", architecture=machine)
