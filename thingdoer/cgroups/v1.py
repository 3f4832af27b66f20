"""The cgroup v1 driver: one hierarchy per controller; each kernel file named here and nowhere
else. On hybrid hosts the cgroup2 mount (``unified``) still gives pressure (PSI) figures for
the same path, since runc makes the directory there too.

OOM kills on v1: ``memory.oom_control``'s ``oom_kill`` counts only the kills in that very
memcg (v1 does not propagate events to ancestors), and runc removes a container's cgroup as
soon as the container exits. So a container's OOM kill is caught as it happens: ``watch_oom``
registers an eventfd on the container's ``memory.oom_control`` through
``cgroup.event_control`` (what runc and Docker do on v1); see ``OomWatch``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Invalid, NotFound, Unavailable
from . import parse
from .driver import Driver, Usage
from .fs import CgroupFS, v1_mounts
from .resources import Limits

# controllers whose directory the pod cgroup needs (cpuacct for usage figures)
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")
_IO_FILES = {"rbps": "blkio.throttle.read_bps_device", "wbps": "blkio.throttle.write_bps_device",
             "riops": "blkio.throttle.read_iops_device", "wiops": "blkio.throttle.write_iops_device"}


class V1(Driver):
    mode = "v1"
    hierarchical_oom = False

    def __init__(self, fs: CgroupFS, mounts: dict[str, Path] | None = None,
                 mountinfo: str = "/proc/self/mountinfo"):
        super().__init__(fs)
        self.mounts = mounts if mounts is not None else v1_mounts(fs.root, mountinfo)
        unified = fs.root / "unified"
        self.unified = unified if (unified / "cgroup.controllers").exists() else None
        self._rel = {c: str(m.relative_to(fs.root)) for c, m in self.mounts.items()}  # built once

    def _file(self, controller: str, path: str, name: str = "") -> str:
        mount = self._rel.get(controller)
        if mount is None:
            raise Invalid(f"the {controller} cgroup controller is not mounted under "
                                f"{self.fs.root}: cannot use {name or path}")
        return self.fs.path(mount, path, name)

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._file("memory", path))

    def apply(self, path: str, limits: Limits) -> None:
        self.forget(path, below=True)
        for controller in CONTROLLERS:
            if controller in self.mounts:
                self.fs.mkdir(self._file(controller, path))
        w = lambda c, name, value: self.fs.write(self._file(c, path, name), value)  # noqa: E731
        w("cpu", "cpu.shares", str(limits.cpu_shares))
        w("cpu", "cpu.cfs_period_us", str(limits.cpu_period_us))
        w("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us or -1))
        # memsw (memory+swap) may never be below the memory limit: lift it, set the limit,
        # then bring it down to the limit (swap off). Absent without swap accounting.
        memsw = self.fs.exists(self._file("memory", path, "memory.memsw.limit_in_bytes"))
        if memsw:
            w("memory", "memory.memsw.limit_in_bytes", "-1")
        w("memory", "memory.limit_in_bytes", str(limits.memory_max if limits.memory_max is not None else -1))
        if memsw and limits.memory_max is not None:
            w("memory", "memory.memsw.limit_in_bytes", str(limits.memory_max))
        w("pids", "pids.max", str(limits.pids_max) if limits.pids_max else parse.MAX)
        for io in limits.io_max:
            for key, value in io.limits.items():
                w("blkio", _IO_FILES[key], f"{io.device} {value}")

    def _get(self, parser, controller: str, path: str, name: str, *, static: bool = False):
        """``name`` of ``path`` in ``controller``'s hierarchy, parsed; limits read once."""
        file = self._file(controller, path, name)
        return parser(self.read_static(path, file) if static else self.fs.read(file), file)

    def _cpu(self, u: Usage, path: str) -> None:
        u.cpu_usage_seconds = self._get(parse.integer, "cpuacct", path, "cpuacct.usage") / 1e9
        stat = self._get(parse.flat_keyed, "cpu", path, "cpu.stat")
        u.cpu_periods = stat.get("nr_periods")
        u.cpu_throttled_periods = stat.get("nr_throttled")
        u.cpu_throttled_seconds = stat.get("throttled_time", 0) / 1e9
        quota = self._get(parse.integer, "cpu", path, "cpu.cfs_quota_us", static=True)
        period = self._get(parse.integer, "cpu", path, "cpu.cfs_period_us", static=True)
        u.cpu_quota_cores = quota / period if quota > 0 else None

    def _memory(self, u: Usage, path: str) -> None:
        u.memory_current = self._get(parse.integer, "memory", path, "memory.usage_in_bytes")
        stat = self._get(parse.flat_keyed, "memory", path, "memory.stat")
        u.memory_working_set = max(0, u.memory_current - stat.get("total_inactive_file", 0))
        u.memory_rss = stat.get("total_rss")
        u.memory_peak = self._get(parse.integer, "memory", path, "memory.max_usage_in_bytes")
        u.memory_limit = self._get(parse.limit, "memory", path, "memory.limit_in_bytes", static=True)
        u.oom_kills = self.oom_kills(path)

    def _pids(self, u: Usage, path: str) -> None:
        u.pids_current = self._get(parse.integer, "pids", path, "pids.current")
        u.pids_limit = self._get(parse.limit, "pids", path, "pids.max", static=True)

    def _io(self, u: Usage, path: str) -> None:
        u.io_read_bytes, u.io_write_bytes = self._get(parse.blkio_bytes, "blkio", path,
                                                      "blkio.throttle.io_service_bytes_recursive")

    def _pressure(self, u: Usage, path: str) -> None:
        if self.unified is None:
            return
        for resource in ("cpu", "memory", "io"):
            file = self.fs.path("unified", path, f"{resource}.pressure")
            try:
                u.pressure[resource] = parse.pressure(self.fs.read(file), file)
            except NotFound:  # no CONFIG_PSI, or runc made no directory there
                pass

    def oom_kills(self, path: str) -> int:
        return self._get(parse.flat_keyed, "memory", path, "memory.oom_control").get("oom_kill", 0)

    def watch_oom(self, path: str) -> "OomWatch":
        return OomWatch(self, path)

    def remove(self, path: str) -> None:
        self.forget(path, below=True)
        for mount in sorted(set(self.mounts.values())) + ([self.unified] if self.unified else []):
            self.fs.remove_tree(self.fs.path(mount.relative_to(self.fs.root), path))


class OomWatch:
    """An eventfd the kernel signals on an OOM in one memcg, and once more when the memcg is
    removed (kernel: ``memcg_event_remove``). Poll ``fileno()``; call ``check()`` when it is
    readable:

    - a signal while the directory still exists is an OOM (removal signals only after rmdir);
    - once the directory is gone, a total of 2 or more signals means an OOM came first.
      The removal signal comes from the memcg's offline work, a moment after the rmdir:
      ``check()`` answers None ("not yet") until the counts settle, ``final()`` decides.
    """

    def __init__(self, driver: V1, path: str):
        self.driver, self.path = driver, path
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.signals = 0
        self.oom = False
        self.directory = driver._file("memory", path)
        # a later container at the same path is another memcg: know this one by its inode
        self.inode = self._inode()
        control_file = driver._file("memory", path, "memory.oom_control")
        try:
            cfd = os.open(driver.fs._checked(control_file), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            os.close(self.fd)
            kind = NotFound if isinstance(err, FileNotFoundError) else Unavailable
            raise kind(f"watching {control_file}: {err.strerror}") from err
        try:
            driver.fs.write(driver._file("memory", path, "cgroup.event_control"), f"{self.fd} {cfd}")
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            os.close(cfd)

    def fileno(self) -> int:
        return self.fd

    def check(self) -> bool | None:
        """True: an OOM happened. None: the cgroup is gone and the verdict needs ``final()``."""
        try:
            self.signals += os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        if self.alive():
            self.oom = self.oom or self.signals > 0
            return self.oom or None
        return True if self.oom or self.signals >= 2 else None

    def alive(self) -> bool:
        """The watched memcg still exists (not merely a new one at the same path)."""
        return self.inode is not None and self._inode() == self.inode

    def _inode(self) -> int | None:
        try:
            return os.stat(self.directory).st_ino
        except FileNotFoundError:
            return None

    def final(self) -> bool:
        self.check()
        return self.oom or self.signals >= 2

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
