"""Usage figures of this node, its pods and their containers, read from their cgroups, as JSON
(``/stats``) and as Prometheus text with cAdvisor's names (``/metrics``).

cpu usage in cores is a rate, so the collector keeps the last cpu counter it read per cgroup:
a scrape's rate is measured since the previous sample at least ``MIN_WINDOW`` seconds old.
``sample()`` runs every ``interval`` seconds (``run``), so a first scrape has a rate too.
Pod figures come from the pod cgroup (which includes its containers), node figures from
``/proc`` (the whole host, as ``kubectl top nodes`` shows it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Callable

from ..cgroups.driver import Driver, Usage
from ..models import Pod

MIN_WINDOW = 1.0
USER_HZ = 100  # /proc/stat's unit on every Linux architecture we run on


class Collector:
    def __init__(self, driver: Driver, cgroup: Callable[..., str], pods: Callable[[], dict[str, Pod]],
                 node_name: str, interval: float = 10.0):
        self.driver, self.cgroup, self.pods, self.node_name = driver, cgroup, pods, node_name
        self.interval = interval
        self._samples: dict[str, list[tuple[float, float]]] = {}  # key → [(t, cpu seconds)]
        self._lock = threading.Lock()  # the sampler and scrapes run in threads

    def _rate(self, key: str, cpu_seconds: float | None, t: float) -> float | None:
        if cpu_seconds is None:
            return None
        history = self._samples.setdefault(key, [])
        old = [s for s in history if t - s[0] >= MIN_WINDOW]
        rate = None
        if old:
            t0, c0 = old[-1]
            rate = max(0.0, (cpu_seconds - c0) / (t - t0))
        # keep the newest sample old enough to measure against, and this one
        self._samples[key] = old[-1:] + [s for s in history if t - s[0] < MIN_WINDOW] + [(t, cpu_seconds)]
        self._samples[key] = self._samples[key][-4:]
        return rate

    def sample(self) -> None:
        """Record cpu counters so the next scrape has a window to measure over."""
        self.collect()

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)

    def _figures(self, key: str, usage: Usage, t: float) -> dict:
        out = usage.dump()
        out["cpu_usage_cores"] = self._rate(key, usage.cpu_usage_seconds, t)
        return out

    def collect(self) -> dict:
        """{"node": {...}, "pods": [{namespace, name, uid, usage, containers: [{name, usage}]}]}."""
        with self._lock:
            return self._collect()

    def _collect(self) -> dict:
        t = time.monotonic()
        pods = []
        live = set()
        for uid, pod in sorted(self.pods().items(), key=lambda kv: kv[1].key):
            usage = self.driver.usage(self.cgroup(uid))
            if usage is None:
                continue
            live.add(uid)
            containers = []
            for c in pod.spec.containers:
                cu = self.driver.usage(self.cgroup(uid, c.name))
                if cu is not None:
                    live.add(f"{uid}/{c.name}")
                    containers.append({"name": c.name, "usage": self._figures(f"{uid}/{c.name}", cu, t)})
            pods.append({"namespace": pod.metadata.namespace or "default", "name": pod.metadata.name,
                         "uid": uid, "usage": self._figures(uid, usage, t), "containers": containers})
        for key in set(self._samples) - live - {""}:
            del self._samples[key]
        node = node_usage()
        node["cpu_usage_cores"] = self._rate("", node["cpu_usage_seconds"], t)
        node.update(name=self.node_name, cgroup_mode=self.driver.mode)
        return {"node": node, "pods": pods, "timestamp": time.time()}


def node_usage(proc: Path = Path("/proc")) -> dict:
    """The whole host: cpu seconds busy, memory in use (MemTotal − MemAvailable), capacity."""
    fields = (proc / "stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    mem = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        mem[key] = int(rest.split()[0]) * 1024
    return {"cpu_usage_seconds": busy / USER_HZ, "memory_total": mem["MemTotal"],
            "memory_working_set": mem["MemTotal"] - mem.get("MemAvailable", mem["MemFree"])}


# -- Prometheus text (cAdvisor's and the kubelet's names) --------------------------------------

_CONTAINER_METRICS = [
    # (name, type, help, usage key, scale)
    ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.",
     "cpu_usage_seconds", 1),
    ("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals.",
     "cpu_periods", 1),
    ("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals.",
     "cpu_throttled_periods", 1),
    ("container_cpu_cfs_throttled_seconds_total", "counter", "Total time duration the container has been throttled.",
     "cpu_throttled_seconds", 1),
    ("container_memory_usage_bytes", "gauge", "Current memory usage in bytes, including all memory regardless of when it was accessed.",
     "memory_current", 1),
    ("container_memory_working_set_bytes", "gauge", "Current working set in bytes.",
     "memory_working_set", 1),
    ("container_memory_rss", "gauge", "Size of RSS in bytes.", "memory_rss", 1),
    ("container_memory_max_usage_bytes", "gauge", "Maximum memory usage recorded in bytes.",
     "memory_peak", 1),
    ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container.", "memory_limit", 1),
    ("container_processes", "gauge", "Number of processes running inside the container.", "pids_current", 1),
    ("container_fs_reads_bytes_total", "counter", "Cumulative count of bytes read.", "io_read_bytes", 1),
    ("container_fs_writes_bytes_total", "counter", "Cumulative count of bytes written.", "io_write_bytes", 1),
    ("container_oom_events_total", "counter", "Count of out of memory events observed for the container.",
     "oom_kills", 1),
]
_PRESSURE = [  # (name, resource, kind): PSI totals are µs
    ("container_pressure_cpu_waiting_seconds_total", "cpu", "some"),
    ("container_pressure_memory_waiting_seconds_total", "memory", "some"),
    ("container_pressure_memory_stalled_seconds_total", "memory", "full"),
    ("container_pressure_io_waiting_seconds_total", "io", "some"),
    ("container_pressure_io_stalled_seconds_total", "io", "full"),
]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(stats: dict) -> str:
    """The ``collect()`` figures as Prometheus text exposition format 0.0.4. Pod cgroups are
    rows with ``container=""``, as cAdvisor reports them."""
    rows: list[tuple[str, dict]] = []
    for pod in stats["pods"]:
        base = {"namespace": pod["namespace"], "pod": pod["name"]}
        rows.append(({**base, "container": ""}, pod["usage"]))
        rows += [({**base, "container": c["name"]}, c["usage"]) for c in pod["containers"]]
    lines = []
    for name, kind, help_, key, scale in _CONTAINER_METRICS:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, usage in rows:
            if usage.get(key) is not None:
                lines.append(f"{name}{{{_labels(labels)}}} {_num(usage[key] * scale)}")
    for name, resource, kind in _PRESSURE:
        lines += [f"# TYPE {name} counter"]
        for labels, usage in rows:
            total = usage.get("pressure", {}).get(resource, {}).get(kind, {}).get("total")
            if total is not None:
                lines.append(f"{name}{{{_labels(labels)}}} {_num(total / 1e6)}")
    node = stats["node"]
    lines += ["# TYPE node_cpu_usage_seconds_total counter",
              f"node_cpu_usage_seconds_total {_num(node['cpu_usage_seconds'])}",
              "# TYPE node_memory_working_set_bytes gauge",
              f"node_memory_working_set_bytes {node['memory_working_set']}",
              "# TYPE machine_memory_bytes gauge", f"machine_memory_bytes {node['memory_total']}"]
    return "\n".join(lines) + "\n"


def _labels(labels: dict) -> str:
    return ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())


def _num(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
