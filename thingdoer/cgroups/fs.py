"""cgroupfs I/O, and nothing else: read, write, mkdir and rmdir under the cgroup root.

Every path is checked to lie under the root (``/sys/fs/cgroup``, or a fake tree in tests)
before it is touched, so no caller can make this module read or write anything but cgroupfs.
Errors carry the path and, for writes, the value: ``writing "64M" to .../memory.max: EBUSY``.
Kinds: a missing file is ``NotFound``, a value the kernel refuses (EINVAL, EBUSY, ERANGE) is
``Invalid``, anything else ``Unavailable``.

The host's hierarchies are never mounted, unmounted or changed here: thingdoer only creates
and removes directories beneath its own parent (``/thingdoer`` by default).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import Invalid, NotFound, Unavailable

CGROUP_ROOT = Path("/sys/fs/cgroup")
_REFUSED = (errno.EINVAL, errno.EBUSY, errno.ERANGE, errno.EOPNOTSUPP)


class CgroupFS:
    """File access confined to ``root``."""

    def __init__(self, root: Path = CGROUP_ROOT):
        self.root = Path(root)
        self._root = os.path.normpath(str(root))

    # Paths are plain strings here: a scrape builds thousands, and pathlib costs ~10x more.
    def path(self, *parts: str | Path) -> str:
        """``root/parts...``, refusing anything that would leave the root (``..``)."""
        return self._checked(os.path.join(self._root, *(str(p).lstrip("/") for p in parts)))

    def exists(self, path: str | Path) -> bool:
        return os.path.exists(self._checked(path))

    def read(self, path: str | Path) -> str:
        path = self._checked(path)
        try:
            # os.read, not open(): a third of the cost per file, which a scrape pays thousands of times
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = [os.read(fd, 65536)]
                while len(chunks[-1]) == 65536:
                    chunks.append(os.read(fd, 65536))
            finally:
                os.close(fd)
            return b"".join(chunks).decode()
        except FileNotFoundError as err:
            raise NotFound(f"reading {path}: no such cgroup file") from err
        except OSError as err:
            if err.errno == errno.ENODEV:  # the cgroup was removed while the file was open
                raise NotFound(f"reading {path}: the cgroup is gone") from err
            raise Unavailable(f"reading {path}: {_name(err)}") from err

    def write(self, path: str | Path, value: str) -> None:
        path = self._checked(path)
        try:
            # One write(2) per value: the kernel parses each write on its own.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as `echo >`; lets fake trees work
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except FileNotFoundError as err:
            raise NotFound(f'writing "{value}" to {path}: no such cgroup file '
                           "(is the controller enabled?)") from err
        except OSError as err:
            kind = Invalid if err.errno in _REFUSED else Unavailable
            raise kind(f'writing "{value}" to {path}: {_name(err)}') from err

    def mkdir(self, path: str | Path) -> None:
        path = self._checked(path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:
            raise Unavailable(f"creating cgroup {path}: {_name(err)}") from err

    def remove_tree(self, path: str | Path) -> None:
        """rmdir ``path`` and every cgroup under it, deepest first; missing is fine, a busy one
        (a process still in it) raises ``Unavailable`` naming the directory."""
        top = Path(self._checked(path))
        if str(top) == self._root:
            raise Invalid("refusing to remove the root cgroup")
        if not top.is_dir():
            return
        for current, dirs, _ in os.walk(top, topdown=False):
            for name in dirs:
                _rmdir(Path(current) / name)
        _rmdir(top)

    def _checked(self, path: str | Path) -> str:
        path = os.path.normpath(str(path))
        if path != self._root and not path.startswith(self._root + "/"):
            raise Invalid(f"cgroup path {path} is outside {self._root}: refusing to touch it")
        return path


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise Unavailable(f"removing cgroup {path}: {_name(err)}") from err


def _name(err: OSError) -> str:
    code = errno.errorcode.get(err.errno or 0, "")
    return f"{code} ({err.strerror})" if code else str(err)


def mode(root: Path = CGROUP_ROOT) -> str:
    """"v2" on a unified host, "v1" on a legacy or hybrid one (like these machines)."""
    return "v2" if (Path(root) / "cgroup.controllers").exists() else "v1"


def v1_mounts(root: Path = CGROUP_ROOT, mountinfo: str = "/proc/self/mountinfo") -> dict[str, Path]:
    """controller → mount point of every v1 hierarchy under ``root`` (``cpu,cpuacct`` mounted
    together gives both names the same mount)."""
    found: dict[str, Path] = {}
    with open(mountinfo) as info:
        for line in info:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] != "cgroup" or not Path(fields[4]).is_relative_to(root):
                continue
            for option in fields[sep + 3].split(","):
                if option not in ("rw", "ro") and ("=" not in option or option.startswith("name=")):
                    found.setdefault(option, Path(fields[4]))
    return found


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The mount points a cgroup path lives under: the root on v2, each v1 hierarchy on v1.
    On hybrid hosts the cgroup2 mount (``unified``) is included: runc makes dirs there too."""
    if mode(root) == "v2":
        return [Path(root)]
    mounts = set(v1_mounts(root).values())
    unified = Path(root) / "unified"
    if (unified / "cgroup.controllers").exists():
        mounts.add(unified)
    return sorted(mounts)


def remove_tree(path: str, root: Path = CGROUP_ROOT) -> None:
    """Remove ``path`` (like ``/thingdoer/pod<uid>``) and everything under it in every
    hierarchy."""
    relative = path.strip("/")
    if not relative:
        raise Invalid("refusing to remove the root cgroup")
    fs = CgroupFS(root)
    for hierarchy in hierarchies(root):
        fs.remove_tree(fs.path(hierarchy.relative_to(root), relative))
