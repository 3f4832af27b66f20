"""The node's image store: an OCI image layout of blobs, each layer unpacked once, and the
per-container rootfs (an overlay over the layers).

Owns, under the node's ``images/`` dir: ``oci/`` (an OCI image layout — ``index.json`` naming
each image by its canonical reference in ``org.opencontainers.image.ref.name``, and
``blobs/sha256``), ``layers/<layer digest hex>/`` (each layer unpacked once, in overlayfs'
format: a whiteout is a 0/0 character device, an opaque dir has ``trusted.overlay.opaque=y``),
and the safe extraction of layer tars.

Promises:
- Every blob is checked against its sha256 digest (and its descriptor's size) as it is written
  and as it is read; a mismatch is ``Invalid`` naming it, and nothing of it is kept.
- Nothing is ever half-written: blobs are written to a hidden ``.partial`` file and renamed
  into place once verified, layers are unpacked into a hidden sibling and renamed, the index
  is replaced atomically. A kill at any point leaves at most hidden leftovers ``prune`` removes.
- Concurrent writers of one blob or one layer (threads or processes) do the work once: a
  ``flock`` per digest, and whoever comes second finds it done.
- Unpacking never writes outside its target, whatever the layers contain: absolute names,
  ``..``, hardlinks out, device nodes and writes through a symlink that leaves the tree are
  refused with ``Invalid`` naming the layer and the member. Symlinks are followed the way the
  container will see them (an absolute target is relative to the root).
- ``prepare_rootfs`` mounts an overlay per container over the image's layer dirs (a fresh copy
  of the layers applied in order where overlay fails); ``release_rootfs`` undoes it, idempotent.

A layer is unpacked on its own, so a member whose parent is a symlink made by a *lower* layer,
or a hardlink to a lower layer's file, is not seen through that layer (as Docker's overlay2
driver, which also applies each layer into its own dir); the hardlink is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ..errors import Cause, Invalid, NotFound
from .busybox import add_to_index, goarch
from .reference import normalize, parse

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
    "application/vnd.docker.image.rootfs.diff.tar": False,
}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_SYMLINKS = 40  # as the kernel's path walk
PARTIAL = ".partial-"


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


@dataclass(frozen=True)
class Listed:
    """One named image of the store, as ``image ls`` shows it."""

    name: str
    digest: str
    size: int       # config + layers, as stored (compressed)
    created: str


def pick_platform(index: dict, where: str) -> dict:
    """The descriptor for linux/<this host's architecture> in an image index / manifest list."""
    arch = goarch()
    found = []
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        found.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if plat.get("os") == "linux" and plat.get("architecture") == arch:
            return desc
    raise NotFound(f"{where} has no image for linux/{arch} (it has: "
                   f"{', '.join(found) or 'nothing'}): use an image built for this platform")


class ImageStore:
    """An OCI image layout directory: read it, add verified blobs, name and unname images."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        """Find ``ref`` by its ref.name annotation (canonical, as given, or with ``:latest``),
        or by its pinned digest when the manifest is in the store."""
        wanted = {normalize(ref), ref, _with_default_tag(ref)}
        for desc in self._index().get("manifests") or []:
            if (desc.get("annotations") or {}).get(REF_NAME) in wanted:
                return self._load(ref, desc)
        digest = _pinned_digest(ref)
        if digest and self.has_blob(digest):
            return self._load(ref, {"digest": digest, "mediaType": _media_type(
                json.loads(read_blob(self.root, digest)))})
        raise NotFound(f'image "{ref}" not found in {self.root}: pull, build or import it first')

    def present(self, ref: str) -> bool:
        try:
            self.resolve(ref)
            return True
        except NotFound:
            return False

    def images(self) -> list[Listed]:
        out = []
        for desc in self._index().get("manifests") or []:
            name = (desc.get("annotations") or {}).get(REF_NAME)
            if not name:
                continue
            try:
                image = self._load(name, desc)
            except (NotFound, Invalid) as err:
                log.warning("image %s is unreadable: %s", name, err)
                continue
            manifest = json.loads(read_blob(self.root, image.manifest_digest))
            size = (manifest["config"].get("size", 0)
                    + sum(layer.get("size", 0) for layer in manifest.get("layers", [])))
            out.append(Listed(name, image.manifest_digest, size, image.config.get("created", "")))
        return sorted(out, key=lambda i: i.name)

    def has_blob(self, digest: str) -> bool:
        return _blob_path(self.root, digest).is_file()

    def remove_blob(self, digest: str) -> None:
        _blob_path(self.root, digest).unlink(missing_ok=True)

    def _load(self, ref: str, desc: dict) -> Image:
        digest, media_type = desc.get("digest", ""), desc.get("mediaType", "")
        if media_type in INDEX_TYPES:
            desc = pick_platform(json.loads(read_blob(self.root, digest)), f'"{ref}" ({digest})')
            digest = desc.get("digest", "")
        manifest = json.loads(read_blob(self.root, digest))
        config = json.loads(read_blob(self.root, manifest["config"]["digest"]))
        layers = [(layer["digest"], layer["mediaType"]) for layer in manifest.get("layers", [])]
        check_layer_types(ref, layers)
        return Image(ref=ref, manifest_digest=digest, config=config, layers=layers,
                     layout=self.root)

    def _index(self) -> dict:
        path = self.root / "index.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise Invalid(Cause(str(path), f"not valid JSON ({err}): fix or remove it")) from err

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive ``flock`` named ``name``, across threads and processes."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` (checked against ``digest`` when given); return its digest."""
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self.ingest(digest, len(data), lambda: iter([data]))
        return digest

    def ingest(self, digest: str, size: int | None, chunks: Callable[[], Iterable[bytes]],
               progress: Callable[[int], None] | None = None) -> bool:
        """Make blob ``digest`` present, reading it from ``chunks()`` only if it is missing;
        True when this call wrote it. Verified against ``digest`` and ``size`` before it
        becomes visible; a concurrent ingest of the same digest waits and then finds it."""
        path = _blob_path(self.root, digest)
        if path.is_file():
            return False
        with self.lock(digest.split(":", 1)[1]):
            if path.is_file():
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent)
            try:
                sha, n = hashlib.sha256(), 0
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks():
                        n += len(chunk)
                        if size is not None and n > size:
                            raise Invalid(Cause(f"blob {digest}", f"longer than its descriptor's "
                                                                  f"size {size}: refused"))
                        sha.update(chunk)
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                if size is not None and n != size:
                    raise Invalid(Cause(f"blob {digest}", f"{n} bytes, but its descriptor says "
                                                          f"{size}: truncated; pull again"))
                if "sha256:" + sha.hexdigest() != digest:
                    raise Invalid(Cause(f"blob {digest}", f"content has digest sha256:"
                                                          f"{sha.hexdigest()}: refused"))
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
                return True
            finally:
                Path(tmp).unlink(missing_ok=True)

    def tag(self, name: str, descriptor: dict) -> None:
        """Name the manifest ``descriptor`` ``name`` (replacing what had that name)."""
        with self.lock("index"):
            add_to_index(self.root, name, {**descriptor, "annotations": {
                **(descriptor.get("annotations") or {}), REF_NAME: name}})

    def untag(self, ref: str) -> str:
        """Remove the name ``ref``; return the manifest digest it named. Blobs stay until
        ``prune``."""
        with self.lock("index"):
            names = {normalize(ref), ref, _with_default_tag(ref)}
            for desc in self._index().get("manifests") or []:
                name = (desc.get("annotations") or {}).get(REF_NAME)
                if name in names:
                    add_to_index(self.root, name, None)
                    return desc.get("digest", "")
        raise NotFound(f'image "{ref}" not found in {self.root}: see `thingdoer image ls`')

    def prune(self, layers_dir: Path | None, keep: set[str] = frozenset()) -> tuple[int, int]:
        """Remove every blob and unpacked layer no named image (nor a manifest in ``keep``,
        e.g. one a container runs from) reaches, and hidden leftovers of interrupted writes.
        Returns (entries removed, bytes of blobs freed)."""
        with self.lock("index"):
            roots = {d.get("digest", "") for d in self._index().get("manifests") or []}
            reachable: set[str] = set()
            for digest in roots | set(keep):
                reachable |= self._reachable(digest)
            removed = freed = 0
            blobs = self.root / "blobs" / "sha256"
            for path in blobs.iterdir() if blobs.is_dir() else []:
                name = path.name.split(PARTIAL)[0].lstrip(".")
                if f"sha256:{name}" in reachable and PARTIAL not in path.name:
                    continue
                if PARTIAL in path.name and not self._idle(name):
                    continue  # being written right now
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                removed += 1
            if layers_dir is not None and Path(layers_dir).is_dir():
                for path in Path(layers_dir).iterdir():
                    name = path.name.lstrip(".").split(".unpack-")[0]
                    if path.name.startswith(".lock-"):
                        continue
                    if f"sha256:{name}" not in reachable and _idle_layer(layers_dir, name):
                        _remove(str(path))
                        removed += 1
            return removed, freed

    def _reachable(self, digest: str) -> set[str]:
        """``digest`` and every blob it references (index → manifests → config and layers)."""
        if not self.has_blob(digest):
            return set()
        out = {digest}
        try:
            doc = json.loads(_blob_path(self.root, digest).read_bytes())
        except ValueError:
            return out
        if not isinstance(doc, dict):
            return out
        for desc in doc.get("manifests") or []:
            out |= self._reachable(desc.get("digest", ""))
        for desc in [doc.get("config") or {}] + list(doc.get("layers") or []):
            if desc.get("digest"):
                out.add(desc["digest"])
        return out

    def _idle(self, hexdigest: str) -> bool:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return _try_lock(locks / f"{hexdigest}.lock")


def _try_lock(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _idle_layer(layers_dir: Path, hexdigest: str) -> bool:
    return _try_lock(Path(layers_dir) / f".lock-{hexdigest}")


def check_layer_types(ref: str, layers: list[tuple[str, str]]) -> None:
    for layer_digest, layer_type in layers:
        if layer_type not in LAYER_TYPES:
            raise Invalid(Cause("image", f'"{ref}" layer {layer_digest} has media type '
                                         f"{layer_type}; supported: {sorted(LAYER_TYPES)}"))


def _media_type(doc: dict) -> str:
    if doc.get("mediaType"):
        return doc["mediaType"]
    return ("application/vnd.oci.image.index.v1+json" if "manifests" in doc
            else "application/vnd.oci.image.manifest.v1+json")


def _pinned_digest(ref: str) -> str | None:
    try:
        return parse(ref).digest
    except Invalid:
        return None


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


def _apply_layer(layout: Path, digest: str, media_type: str, root: Path,
                 *, overlay: bool = False) -> None:
    """Extract one layer into ``root``: applied onto what is there (whiteouts delete), or,
    with ``overlay``, into an empty dir in overlayfs' format (whiteouts recorded)."""
    path = _blob_path(layout, digest)
    try:
        raw = open(path, "rb")
    except FileNotFoundError as err:
        raise NotFound(f"layer {digest} missing from {layout}: re-import the image") from err
    with raw:
        hashing = _HashingReader(raw)
        stream = gzip.GzipFile(fileobj=hashing, mode="rb") if LAYER_TYPES[media_type] else hashing
        layer = _Layer(digest, root, overlay=overlay)
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

    def __init__(self, digest: str, root: Path, *, overlay: bool = False):
        self.digest, self.root, self.overlay = digest, str(root), overlay
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
            if self.overlay:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            else:
                self._make_opaque(parent)
            return
        if base.startswith(WHITEOUT):
            victim = base[len(WHITEOUT):]
            if victim in ("", ".", "..") or "/" in victim:
                raise self.refuse(m.name, "whiteout of an invalid name")
            _remove(os.path.join(parent, victim))
            if self.overlay:  # overlayfs' whiteout: a 0/0 character device
                os.mknod(os.path.join(parent, victim), stat.S_IFCHR | 0o600, os.makedev(0, 0))
                self.written.add(os.path.relpath(os.path.join(parent, victim), self.root))
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


def unpack_layer(image: Image, digest: str, media_type: str, layers_dir: Path) -> Path:
    """``layers_dir/<hex>``: the layer unpacked in overlayfs' format, once. Concurrent callers
    wait on a ``flock`` and find it done; an interrupted unpack leaves only a hidden dir."""
    layers_dir = Path(layers_dir)
    hexdigest = _blob_path(image.layout, digest).name
    target = layers_dir / hexdigest
    if target.is_dir():
        return target
    layers_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layers_dir / f".lock-{hexdigest}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{hexdigest}.unpack-", dir=layers_dir))
            try:
                os.chmod(tmp, 0o755)
                _apply_layer(image.layout, digest, media_type, tmp, overlay=True)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:
        os.close(fd)
    return target


def prepare_rootfs(image: Image, layers_dir: Path, rootfs: Path, *, overlay: bool = True) -> str:
    """Give a container its own writable ``rootfs`` of ``image``; return "overlay" or "copy".

    Each layer is unpacked once into ``layers_dir/<layer hex>`` (shared, never written after)
    and the layers are mounted read-only under an overlay whose upper/work dirs sit next to
    ``rootfs``. When the overlay mount fails (or ``overlay`` is false) the layers are applied in
    order into ``rootfs`` itself instead. A marker file ``<rootfs>.mount`` records which, so
    ``release_rootfs`` knows what to undo.
    """
    rootfs, layers_dir = Path(rootfs), Path(layers_dir)
    upper, work, marker = _side_paths(rootfs)
    if overlay:
        lowers = [unpack_layer(image, d, t, layers_dir) for d, t in image.layers]
        if not lowers:  # overlayfs needs a lower dir
            lowers = [layers_dir / "empty"]
            lowers[0].mkdir(parents=True, exist_ok=True)
        rootfs.mkdir(parents=True, exist_ok=True)
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        try:
            # lowerdir lists the top layer first.
            _mount("overlay", rootfs, "overlay", f"lowerdir={':'.join(map(str, reversed(lowers)))}"
                                                 f",upperdir={upper},workdir={work}")
            marker.write_text("overlay\n")
            return "overlay"
        except OSError as err:
            log.warning("overlay mount failed, copying the rootfs instead: %s", err)
            shutil.rmtree(upper)
            shutil.rmtree(work)
    _unpack(image, rootfs)
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
