"""The cgroup v2 driver: one hierarchy; each kernel file named here and nowhere else."""

from __future__ import annotations

from ..errors import NotFound
from . import parse
from .driver import Driver, Usage
from .fs import CgroupFS
from .resources import Limits, v2_weight

CONTROLLERS = ("cpu", "memory", "pids", "io")


class V2(Driver):
    mode = "v2"
    hierarchical_oom = True  # memory.events counts the kills of every descendant

    def __init__(self, fs: CgroupFS):
        super().__init__(fs)

    def _file(self, path: str, name: str):
        return self.fs.path(path, name)

    def exists(self, path: str) -> bool:
        return self.fs.exists(self.fs.path(path))

    def _enable_controllers(self, path: str) -> None:
        """Children only get a controller their parent delegates: enable ours on every
        ancestor of ``path`` (the root and our parent included), as runc does."""
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts)):
            parent = "/" + "/".join(parts[:depth])
            available = set(self.fs.read(self._file(parent, "cgroup.controllers")).split())
            enabled = set(self.fs.read(self._file(parent, "cgroup.subtree_control")).split())
            wanted = [c for c in CONTROLLERS if c in available and c not in enabled]
            if wanted:
                self.fs.write(self._file(parent, "cgroup.subtree_control"),
                              " ".join("+" + c for c in wanted))

    def apply(self, path: str, limits: Limits) -> None:
        self.forget(path, below=True)
        self.fs.mkdir(self.fs.path(path))
        self._enable_controllers(path + "/x")  # the pod's own children (containers) too
        w = lambda name, value: self.fs.write(self._file(path, name), value)  # noqa: E731
        w("cpu.weight", str(v2_weight(limits.cpu_shares)))
        quota = str(limits.cpu_quota_us) if limits.cpu_quota_us else parse.MAX
        w("cpu.max", f"{quota} {limits.cpu_period_us}")
        w("memory.max", str(limits.memory_max) if limits.memory_max is not None else parse.MAX)
        if limits.memory_max is not None and self.fs.exists(self._file(path, "memory.swap.max")):
            w("memory.swap.max", "0")  # absent without swap accounting: nothing to turn off
        w("pids.max", str(limits.pids_max) if limits.pids_max else parse.MAX)
        for io in limits.io_max:
            w("io.max", f"{io.device} " + " ".join(f"{k}={v}" for k, v in io.limits.items()))

    def _read(self, path: str, name: str) -> str:
        return self.fs.read(self._file(path, name))

    def _get(self, parser, path: str, name: str, *, static: bool = False):
        """File ``name`` of ``path``, parsed; limits read once."""
        file = self._file(path, name)
        return parser(self.read_static(path, file) if static else self.fs.read(file), file)

    def _cpu(self, u: Usage, path: str) -> None:
        stat = self._get(parse.flat_keyed, path, "cpu.stat")
        u.cpu_usage_seconds = stat["usage_usec"] / 1e6
        u.cpu_periods = stat.get("nr_periods")
        u.cpu_throttled_periods = stat.get("nr_throttled")
        if "throttled_usec" in stat:
            u.cpu_throttled_seconds = stat["throttled_usec"] / 1e6
        quota, period = self._get(parse.cpu_max, path, "cpu.max", static=True)
        u.cpu_quota_cores = quota / period if quota else None

    def _memory(self, u: Usage, path: str) -> None:
        u.memory_current = self._get(parse.integer, path, "memory.current")
        stat = self._get(parse.flat_keyed, path, "memory.stat")
        u.memory_working_set = max(0, u.memory_current - stat.get("inactive_file", 0))
        u.memory_rss = stat.get("anon")
        u.memory_limit = self._get(parse.limit, path, "memory.max", static=True)
        try:
            u.memory_peak = self._get(parse.integer, path, "memory.peak")
        except NotFound:  # Linux < 5.19
            pass
        u.oom_kills = self.oom_kills(path)

    def _pids(self, u: Usage, path: str) -> None:
        u.pids_current = self._get(parse.integer, path, "pids.current")
        u.pids_limit = self._get(parse.limit, path, "pids.max", static=True)

    def _io(self, u: Usage, path: str) -> None:
        u.io_read_bytes, u.io_write_bytes = self._get(parse.io_stat, path, "io.stat")

    def _pressure(self, u: Usage, path: str) -> None:
        for resource in ("cpu", "memory", "io"):
            name = f"{resource}.pressure"
            try:
                u.pressure[resource] = parse.pressure(self._read(path, name), self._file(path, name))
            except NotFound:  # only with CONFIG_PSI
                pass

    def oom_kills(self, path: str) -> int:
        return self._get(parse.flat_keyed, path, "memory.events").get("oom_kill", 0)

    def remove(self, path: str) -> None:
        self.forget(path, below=True)
        self.fs.remove_tree(self.fs.path(path))
