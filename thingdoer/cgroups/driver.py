"""One interface over both cgroup versions: apply a cgroup's limits, read its usage, count its
OOM kills, remove it. ``detect()`` picks the driver for the host (``v2`` on a unified host,
``v1`` on a legacy or hybrid one like these machines).

Paths given to a driver are cgroup paths (``/thingdoer/pod<uid>``), never filesystem paths;
each driver knows where they live.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ThingdoerError
from .fs import CGROUP_ROOT, CgroupFS, mode
from .resources import Limits


@dataclass
class Usage:
    """A cgroup's figures at one instant (cumulative counters, not rates). None: the kernel
    does not offer it here. Files that failed to read are listed in ``errors``, not fatal."""

    cpu_usage_seconds: float | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_seconds: float | None = None
    memory_current: int | None = None
    memory_working_set: int | None = None  # current − inactive_file, as cAdvisor
    memory_rss: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None
    cpu_quota_cores: float | None = None
    pids_current: int | None = None
    pids_limit: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    oom_kills: int | None = None
    pressure: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def dump(self) -> dict:
        # shallow: asdict's deep copy was a tenth of a 100-pod scrape
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Driver:
    """What both versions offer; ``v1.V1`` and ``v2.V2`` implement it."""

    mode = ""
    #: True when a pod cgroup's OOM counter includes its containers' kills (v2 memory.events);
    #: on v1 the counter is the container's own, gone with the container (see ``watch_oom``).
    hierarchical_oom = False

    def __init__(self, fs: CgroupFS):
        self.fs = fs
        self._static: dict[str, dict[str, str]] = {}  # cgroup → limit file → text

    def read_static(self, cgroup: str, file: str) -> str:
        """A limit file of ``cgroup``, read once: pods are immutable, so only ``apply`` (which
        forgets it) or a new cgroup changes it."""
        files = self._static.setdefault(cgroup, {})
        if file not in files:
            files[file] = self.fs.read(file)
        return files[file]

    def forget(self, cgroup: str, *, below: bool = False) -> None:
        """Drop the limits ``read_static`` holds for ``cgroup`` (and every cgroup below it)."""
        self._static.pop(cgroup, None)
        if below:
            for key in [k for k in list(self._static) if k.startswith(cgroup + "/")]:  # list(): atomic vs. the stats thread
                del self._static[key]

    def apply(self, path: str, limits: Limits) -> None:
        raise NotImplementedError

    def usage(self, path: str) -> Usage | None:
        """Every figure of ``path``; None when the cgroup does not exist."""
        if not self.exists(path):
            self.forget(path)
            return None
        u = Usage()
        for reader in (self._cpu, self._memory, self._pids, self._io, self._pressure):
            self._collect(u, reader, path)
        return u

    def oom_kills(self, path: str) -> int:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def watch_oom(self, path: str):
        """An ``OomWatch`` on a container's cgroup (v1), or None where the pod's counter
        suffices (v2)."""
        return None

    def _collect(self, usage: Usage, fn, *args) -> None:
        """Run one reader; a failure is noted in ``usage.errors``, the rest still read."""
        try:
            fn(usage, *args)
        except ThingdoerError as err:
            usage.errors.append(str(err))


def detect(root: Path = CGROUP_ROOT, mountinfo: str = "/proc/self/mountinfo") -> Driver:
    from .v1 import V1
    from .v2 import V2
    fs = CgroupFS(root)
    return V2(fs) if mode(root) == "v2" else V1(fs, mountinfo=mountinfo)
