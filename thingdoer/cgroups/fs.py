"""Finding cgroup hierarchies and removing thingdoer's own subtrees from them.

The host's hierarchies are never mounted, unmounted or changed here: thingdoer only creates
and removes directories beneath its own parent (``/thingdoer`` by default).
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def mode(root: Path = CGROUP_ROOT) -> str:
    """"v2" on a unified host, "v1" on a legacy or hybrid one (like these machines)."""
    return "v2" if (root / "cgroup.controllers").exists() else "v1"


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The mount points a cgroup path lives under: the root on v2, each v1 controller on v1."""
    if mode(root) == "v2":
        return [root]
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            mount_point = Path(fields[4])
            if fstype == "cgroup" and mount_point.is_relative_to(root):
                mounts.append(mount_point)
    return sorted(set(mounts))


def remove_tree(path: str, root: Path = CGROUP_ROOT) -> None:
    """rmdir ``path`` (like ``/thingdoer/pod<uid>``) and everything under it, deepest first,
    in every hierarchy. Missing directories are fine; a busy one (a process still in it)
    raises ``OSError`` naming the directory."""
    relative = path.strip("/")
    if not relative:
        raise ValueError("refusing to remove the root cgroup")
    for hierarchy in hierarchies(root):
        top = hierarchy / relative
        if not top.is_dir():
            continue
        for current, dirs, _ in os.walk(top, topdown=False):
            for name in dirs:
                _rmdir(Path(current) / name)
        _rmdir(top)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise OSError(err.errno, f"removing cgroup {path}: {err.strerror}") from err
