"""Which container runs ended in an OOM kill, kept on disk so a restarted agent still knows.

The fact is one marker file, ``oom``, in the run's bundle (a restart gets a fresh bundle, so
a marker always belongs to the run it sits beside). How it gets there depends on the driver:

- v2: the pod cgroup's ``memory.events`` ``oom_kill`` counts its containers' kills too, and
  the pod cgroup outlives them. When a run is seen to have exited with 137 (SIGKILL), the
  pod's counter is compared with ``oom_kills`` in the pod dir (the kills already attributed):
  a higher count marks this run and moves the ledger. Decided once per run (``oom.checked``),
  so it also works after an agent restart.
- v1: the counter lives in the container's own memcg, which runc removes when the container
  exits; ``OomMonitor`` holds an eventfd on it (``cgroups.v1.OomWatch``) while the container
  runs and writes the marker as the kill happens. An OOM kill while no agent runs is not seen
  on v1 (the status then says ``Error``, exit 137).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from ..cgroups.driver import Driver
from ..errors import NotFound, ThingdoerError

log = logging.getLogger(__name__)

MARKER, CHECKED, LEDGER = "oom", "oom.checked", "oom_kills"
SIGKILL_EXIT = 137
SETTLE = 0.5  # seconds for the memcg's removal signal to follow its rmdir (v1)


def mark(bundle: Path) -> None:
    if bundle.is_dir():
        (bundle / MARKER).touch()


def oom_killed(driver: Driver, bundle: Path, pod_cgroup: str, exit_code: int | None) -> bool:
    """Whether the exited run in ``bundle`` was OOM-killed (deciding it now on v2)."""
    if (bundle / MARKER).exists():
        return True
    if exit_code != SIGKILL_EXIT or not driver.hierarchical_oom or (bundle / CHECKED).exists():
        return False
    try:
        count = driver.oom_kills(pod_cgroup)
    except NotFound:
        return False
    ledger = bundle.parent / LEDGER
    try:
        seen = int(ledger.read_text())
    except (OSError, ValueError):
        seen = 0
    if count > seen:
        mark(bundle)
        ledger.write_text(str(count))
    (bundle / CHECKED).touch()
    return count > seen


class OomMonitor:
    """v1: one eventfd watch per running container, served by the event loop."""

    def __init__(self, driver: Driver, on_oom: Callable[[str], None]):
        self.driver, self.on_oom = driver, on_oom
        self._watches: dict[tuple[str, str], object] = {}

    def watch(self, uid: str, name: str, cgroup: str, bundle: Path) -> None:
        key = (uid, name)
        if key in self._watches or self.driver.hierarchical_oom:
            return
        try:
            watch = self.driver.watch_oom(cgroup)
            if self.driver.oom_kills(cgroup):  # killed before we were watching
                mark(bundle)
        except NotFound:
            return  # already exited: nothing left to watch
        except ThingdoerError as err:
            log.warning("pod %s container %s: cannot watch for OOM kills: %s", uid, name, err)
            return
        if watch is None:
            return
        self._watches[key] = watch
        loop = asyncio.get_running_loop()

        def done(oom: bool) -> None:
            loop.remove_reader(watch.fileno())
            watch.close()
            self._watches.pop(key, None)
            if oom:
                mark(bundle)
                self.on_oom(uid)

        def readable() -> None:
            verdict = watch.check()
            if verdict:
                done(True)
            elif not watch.alive():
                loop.remove_reader(watch.fileno())
                loop.call_later(SETTLE, lambda: done(watch.final()))

        loop.add_reader(watch.fileno(), readable)
