"""Read images from an OCI image layout and turn them into container root filesystems.

Owns: the layout on disk (``index.json``, ``blobs/sha256``), layer extraction, and the
per-container rootfs mount (overlayfs over a shared, unpacked copy of the image).

Promises:
- Every blob read is checked against its sha256 digest; a mismatch is ``Invalid`` naming it.
- ``unpack`` never writes outside the target rootfs, whatever the layers contain: absolute
  names, ``..``, hardlinks out, device nodes and writes through a symlink that leaves the
  rootfs are refused with ``Invalid`` naming the layer and the member. Symlinks are followed
  the way the container will see them (an absolute target is relative to the rootfs).
- Unpacking is all or nothing: it extracts into a hidden sibling and renames it into place, so
  a refusal, an error or a kill leaves no rootfs behind (at most a ``.<name>.unpack-*`` dir).
- ``prepare_rootfs`` unpacks each image once into the cache and mounts an overlay per
  container (or copies, where overlay fails); ``release_rootfs`` undoes it and is idempotent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from thingdoer.errors import Cause, Invalid, NotFound

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
# Layer media type → compressed with gzip?
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": False,
    "application/vnd.oci.image.layer.v1.tar+gzip": True,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": True,
}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 40  # as the kernel's path walk


@dataclass(frozen=True)
class Image:
    """A resolved image. ``config`` is the whole image config document; its ``config``
    sub-dict holds Entrypoint/Cmd/Env/WorkingDir. ``layers`` are (digest, mediaType), lowest
    first. ``layout`` is the layout directory its blobs live in."""

    ref: str
    manifest_digest: str
    config: dict
    layers: list[tuple[str, str]] = field(default_factory=list)
    layout: Path = Path()


class ImageStore:
    """An OCI image layout directory, read-only."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def resolve(self, ref: str) -> Image:
        """Find ``ref`` by its ref.name annotation: an exact match, or ``ref:latest``."""
        wanted = {ref, _with_default_tag(ref)}
        index = self._read_json(self.root / "index.json", "index.json")
        for desc in index.get("manifests") or []:
            if (desc.get("annotations") or {}).get(REF_NAME) in wanted:
                return self._load(ref, desc)
        raise NotFound(f'image "{ref}" not found in {self.root}: build or import it first')

    def _load(self, ref: str, desc: dict) -> Image:
        digest, media_type = desc.get("digest", ""), desc.get("mediaType", "")
        if media_type in INDEX_TYPES:
            raise Invalid(Cause("image", f'"{ref}" in {self.root} is a multi-platform index '
                                         f"({digest}): copy a single platform "
                                         "(skopeo copy without --all)"))
        manifest = json.loads(read_blob(self.root, digest))
        config = json.loads(read_blob(self.root, manifest["config"]["digest"]))
        layers = [(layer["digest"], layer["mediaType"]) for layer in manifest.get("layers", [])]
        for layer_digest, layer_type in layers:
            if layer_type not in LAYER_TYPES:
                raise Invalid(Cause("image", f'"{ref}" layer {layer_digest} has media type '
                                             f"{layer_type}; supported: {sorted(LAYER_TYPES)}"))
        return Image(ref=ref, manifest_digest=digest, config=config, layers=layers,
                     layout=self.root)

    def _read_json(self, path: Path, what: str) -> dict:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as err:
            raise NotFound(f"no OCI image layout at {self.root} ({what} missing): "
                           "build or import an image there first") from err
        except ValueError as err:
            raise Invalid(Cause(str(path), f"not valid JSON ({err})")) from err


def _with_default_tag(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else ref + ":latest"


# ---- blobs --------------------------------------------------------------------------------------


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef"
                                                           for c in hexdigest):
        raise Invalid(Cause("digest", f'"{digest}" in {layout} is not a sha256 digest'))
    return layout / "blobs" / "sha256" / hexdigest


def read_blob(layout: Path, digest: str) -> bytes:
    """The blob's bytes, verified against ``digest``."""
    path = _blob_path(layout, digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise NotFound(f"blob {digest} missing from {layout}: re-import the image") from err
    if hashlib.sha256(data).hexdigest() != digest.split(":", 1)[1]:
        raise _digest_mismatch(path, digest)
    return data


class _HashingReader:
    """A read-only file that hashes what passes through, so a layer is verified as it streams."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest()


# ---- unpacking ----------------------------------------------------------------------------------


def unpack(image: Image, rootfs: Path) -> None:
    """Extract the image's layers, in order, into ``rootfs`` (which must be absent or empty)."""
    rootfs = Path(rootfs)
    if rootfs.exists() and (not rootfs.is_dir() or any(rootfs.iterdir())):
        raise Invalid(Cause("rootfs", f"{rootfs} exists and is not an empty directory: "
                                      "remove it first"))
    _unpack(image, rootfs)


def _unpack(image: Image, rootfs: Path) -> None:
    """Extract into a hidden sibling, then rename it onto ``rootfs``: OSError ENOTEMPTY if
    ``rootfs`` gained contents meanwhile."""
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.unpack-", dir=rootfs.parent))
    try:
        os.chmod(tmp, 0o755)
        for digest, media_type in image.layers:
            _apply_layer(image.layout, digest, media_type, tmp)
        os.rename(tmp, rootfs)  # onto an empty dir or nothing: atomic
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_layer(layout: Path, digest: str, media_type: str, root: Path) -> None:
    path = _blob_path(layout, digest)
    try:
        raw = open(path, "rb")
    except FileNotFoundError as err:
        raise NotFound(f"layer {digest} missing from {layout}: re-import the image") from err
    with raw:
        hashing = _HashingReader(raw)
        stream = gzip.GzipFile(fileobj=hashing, mode="rb") if LAYER_TYPES[media_type] else hashing
        layer = _Layer(digest, root)
        try:
            # "r|": a forward-only stream, so the digest covers exactly what was extracted.
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    layer.apply(tar, member)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            # A corrupt blob reads as a broken stream: say which it is if the digest knows.
            if hashing.drain() != digest:
                raise _digest_mismatch(path, digest) from err
            raise Invalid(Cause(f"layer {digest}", f"not a readable tar ({err})")) from err
        if hashing.drain() != digest:
            raise _digest_mismatch(path, digest)
        layer.finish()


def _digest_mismatch(path: Path, digest: str) -> Invalid:
    return Invalid(Cause(str(path), f"content does not match digest {digest}: the blob is "
                                    "corrupt; re-import the image"))


class _Layer:
    """Applies one layer's members to ``root``, refusing anything that could escape it."""

    def __init__(self, digest: str, root: Path):
        self.digest, self.root = digest, str(root)
        self.written: set[str] = set()  # rootfs-relative paths this layer created
        self.dir_times: list[tuple[str, int]] = []  # applied last: writing children moves them

    def refuse(self, name: str, why: str) -> Invalid:
        return Invalid(Cause(f"layer {self.digest}", f'member "{name}" refused: {why}'))

    def apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._parts(m.name)
        if not parts:  # "./": the root itself
            if m.isdir():
                self._set_meta(self.root, m)
            return
        base = parts[-1]
        parent = self._resolve(parts[:-1], m.name, create=True)
        target = os.path.join(parent, base)
        if base == OPAQUE:
            self._make_opaque(parent)
            return
        if base.startswith(WHITEOUT):
            victim = base[len(WHITEOUT):]
            if victim in ("", ".", ".."):
                raise self.refuse(m.name, "whiteout of an invalid name")
            _remove(os.path.join(parent, victim))
            return
        if m.ischr() or m.isblk():
            raise self.refuse(m.name, "device nodes are not allowed in images")

        existing = _lstat(target)
        if existing and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
            _remove(target)  # replace, never write through an existing symlink
        if m.isdir():
            if not existing or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(target, 0o700)
        elif m.isreg():
            src = tar.extractfile(m)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        elif m.issym():
            os.symlink(m.linkname, target)  # may point anywhere: resolved inside the container
        elif m.islnk():
            link_parts = self._parts(m.linkname, member=m.name)
            if not link_parts:
                raise self.refuse(m.name, f'hardlink to "{m.linkname}"')
            src_path = os.path.join(self._resolve(link_parts[:-1], m.name, create=False),
                                    link_parts[-1])
            if not _lstat(src_path):
                raise self.refuse(m.name, f'hardlink target "{m.linkname}" is not in the image')
            os.link(src_path, target, follow_symlinks=False)
        elif m.isfifo():
            os.mkfifo(target, 0o600)
        else:
            raise self.refuse(m.name, f"unsupported tar member type {m.type!r}")
        self.written.add(os.path.relpath(target, self.root))
        if not m.islnk():  # a hardlink shares its target's inode and metadata
            self._set_meta(target, m)

    def finish(self) -> None:
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _parts(self, name: str, member: str = "") -> list[str]:
        """``name`` (of ``member``, default itself) as path components; refuses absolute names
        and ``..``."""
        what = f'hardlink target "{name}"' if member else "path"
        if name.startswith("/"):
            raise self.refuse(member or name, f"absolute {what}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member or name, f'".." in {what}')
        return parts

    def _resolve(self, parts: list[str], name: str, *, create: bool) -> str:
        """The real directory ``parts`` names inside the root, following symlinks as the
        container would (absolute targets from the root) and refusing any that climb out.
        Missing directories are created when ``create``, else refused."""
        stack: list[str] = []
        todo = list(reversed(parts))
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise self.refuse(name, "path goes through a symlink that leaves the rootfs")
                stack.pop()
                continue
            path = os.path.join(self.root, *stack, part)
            st = _lstat(path)
            if st is None:
                if not create:
                    raise self.refuse(name, f'"{"/".join(stack + [part])}" does not exist')
                os.mkdir(path, 0o755)
                self.written.add(os.path.relpath(path, self.root))
            elif stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise self.refuse(name, "too many levels of symlinks")
                target = os.readlink(path)
                if target.startswith("/"):
                    stack = []
                todo.extend(reversed(target.split("/")))
                continue
            elif not stat.S_ISDIR(st.st_mode):
                raise self.refuse(name, f'"{"/".join(stack + [part])}" is not a directory')
            stack.append(part)
        return os.path.join(self.root, *stack)

    def _make_opaque(self, directory: str) -> None:
        """Remove what lower layers put in ``directory``; keep what this layer wrote."""
        for entry in os.scandir(directory):
            rel = os.path.relpath(entry.path, self.root)
            if rel not in self.written:
                _remove(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                self._make_opaque(entry.path)

    def _set_meta(self, path: str, m: tarfile.TarInfo) -> None:
        os.lchown(path, m.uid, m.gid)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid/setgid
        if m.isdir():
            self.dir_times.append((path, int(m.mtime)))
        else:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ---- per-container rootfs -----------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


def _mount(source: str, target: Path, fstype: str, data: str) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} -o {data}: {os.strerror(err)}", str(target))


def _umount(target: Path) -> None:
    """Lazily unmount ``target``; not mounted (EINVAL) or absent (ENOENT) is fine."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}", str(target))


def _side_paths(rootfs: Path) -> tuple[Path, Path, Path]:
    """The overlay upper and work dirs and the marker, next to the rootfs (in the bundle)."""
    return (rootfs.with_name(rootfs.name + ".upper"), rootfs.with_name(rootfs.name + ".work"),
            rootfs.with_name(rootfs.name + ".mount"))


def prepare_rootfs(image: Image, cache_dir: Path, rootfs: Path, *, overlay: bool = True) -> str:
    """Give a container its own writable ``rootfs`` of ``image``; return "overlay" or "copy".

    The image is unpacked once into ``cache_dir/<manifest hex>`` (shared, never written after)
    and mounted read-only under an overlay whose upper/work dirs sit next to ``rootfs``. When the
    overlay mount fails (or ``overlay`` is false) the cached tree is copied instead. A marker file
    ``<rootfs>.mount`` records which, so ``release_rootfs`` knows what to undo.
    """
    rootfs, cache_dir = Path(rootfs), Path(cache_dir)
    lower = cache_dir / image.manifest_digest.split(":", 1)[-1]
    if not lower.is_dir():
        try:
            _unpack(image, lower)
        except OSError as err:  # another thread renamed its unpack into place first
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not lower.is_dir():
                raise
    upper, work, marker = _side_paths(rootfs)
    rootfs.mkdir(parents=True, exist_ok=True)
    if overlay:
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        try:
            _mount("overlay", rootfs, "overlay",
                   f"lowerdir={lower},upperdir={upper},workdir={work}")
            marker.write_text("overlay\n")
            return "overlay"
        except OSError as err:
            log.warning("overlay mount failed, copying the rootfs instead: %s", err)
            shutil.rmtree(upper)
            shutil.rmtree(work)
    # cp -a, not shutil.copytree: it keeps owners and hardlinks.
    cp = subprocess.run(["cp", "-a", "--reflink=auto", f"{lower}/.", str(rootfs)],
                        capture_output=True, text=True)
    if cp.returncode != 0:
        shutil.rmtree(rootfs, ignore_errors=True)
        raise OSError(errno.EIO, f"copying {lower} failed: {cp.stderr.strip()}", str(rootfs))
    marker.write_text("copy\n")
    return "copy"


def release_rootfs(rootfs: Path) -> None:
    """Undo ``prepare_rootfs``: unmount and remove the rootfs and its upper/work dirs. Call it
    only after the container is deleted. Idempotent."""
    rootfs = Path(rootfs)
    upper, work, marker = _side_paths(rootfs)
    if not marker.exists() or marker.read_text().strip() == "overlay":
        _umount(rootfs)
    for path in (rootfs, upper, work):
        if path.exists():
            shutil.rmtree(path)
    marker.unlink(missing_ok=True)
