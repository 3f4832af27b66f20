"""Write images into an OCI image layout, and build a busybox image from busybox-static.

The layout written is the one ``skopeo``/``umoci`` read (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``). An image is found by its ``org.opencontainers.image.ref.name``
annotation, which holds the full reference (``localhost/busybox:latest``); writing an image
replaces any index entry with the same name and leaves the others alone (``add_to_index``, which
``image.ImageStore`` also uses, under its lock).

Promise: the busybox image is deterministic — fixed mtimes and owners, sorted entries, gzip
mtime 0 — so rebuilding from the same ``/bin/busybox`` gives the same manifest digest.

    python -m thingdoer.oci.busybox LAYOUT_DIR [REF]    # prints the manifest digest
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
LAYER_GZIP_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR_TYPE = "application/vnd.oci.image.layer.v1.tar"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every entry of the busybox layer gets this mtime (2000-01-01), so the tar bytes never vary.
FIXED_MTIME = 946684800
# platform.machine() → OCI/Go architecture names.
GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
          "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def goarch() -> str:
    machine = platform.machine()
    return GOARCH.get(machine, machine)


# ---- writing a layout ---------------------------------------------------------------------------


def write_blob(layout_dir: Path, data: bytes) -> str:
    """Store ``data`` as a content-addressed blob; return its ``sha256:<hex>`` digest."""
    hexdigest = hashlib.sha256(data).hexdigest()
    path = layout_dir / "blobs" / "sha256" / hexdigest
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
    return f"sha256:{hexdigest}"


def write_image(layout_dir: Path, ref: str, layers: list[bytes], config: dict,
                *, compress: bool = True) -> str:
    """Write an image made of ``layers`` (uncompressed tar bytes, lowest first) into the layout.

    ``config`` is the image config document without ``rootfs``, which is filled in from the
    layers' diff_ids. Layers are gzipped (mtime 0) unless ``compress`` is false. The index entry
    named ``ref`` is replaced. Returns the manifest digest.
    """
    layout_dir.mkdir(parents=True, exist_ok=True)
    layer_descs, diff_ids = [], []
    for tar_bytes in layers:
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
        blob = _gzip(tar_bytes) if compress else tar_bytes
        layer_descs.append({"mediaType": LAYER_GZIP_TYPE if compress else LAYER_TAR_TYPE,
                            "digest": write_blob(layout_dir, blob), "size": len(blob)})
    config = {**config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": write_blob(layout_dir, config_bytes),
                   "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = _canonical(manifest)
    digest = write_blob(layout_dir, manifest_bytes)
    add_to_index(layout_dir, ref, {
        "mediaType": MANIFEST_TYPE, "digest": digest, "size": len(manifest_bytes),
        "platform": {"architecture": config.get("architecture", goarch()),
                     "os": config.get("os", "linux")},
        "annotations": {REF_NAME: ref},
    })
    return digest


def add_to_index(layout_dir: Path, ref: str, descriptor: dict | None) -> None:
    """Name ``descriptor`` ``ref`` in the layout's index.json, replacing any entry of that
    name (``None``: only remove it). Callers that may race hold ``image.ImageStore``'s lock."""
    (layout_dir / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = layout_dir / "index.json"
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
        except ValueError as err:
            raise ValueError(f"{index_path} is not valid JSON ({err}): fix or remove it") from err
    else:
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []}
    others = [m for m in index.get("manifests") or []
              if (m.get("annotations") or {}).get(REF_NAME) != ref]
    index["manifests"] = others + ([descriptor] if descriptor else [])
    _write_atomic(index_path, json.dumps(index, indent=2).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that varies.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


# ---- the busybox image --------------------------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def busybox_layer(busybox: Path = Path("/bin/busybox")) -> bytes:
    """A tar of /bin/busybox, a /bin symlink per applet, the usual top dirs and passwd/group."""
    try:
        binary = busybox.read_bytes()
        applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True,
                                 text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        raise FileNotFoundError(
            f"cannot read busybox at {busybox} ({err}): install busybox-static") from err

    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def add(name: str, kind: bytes, mode: int, data: bytes | None = None, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, FIXED_MTIME, link
        info.uname = info.gname = "root"
        if data is not None:
            info.size = len(data)
        entries.append((info, data))

    for d in ["bin", "dev", "etc", "home", "proc", "sys", "var"]:
        add(d, tarfile.DIRTYPE, 0o755)
    add("root", tarfile.DIRTYPE, 0o700)
    add("tmp", tarfile.DIRTYPE, 0o1777)
    add("bin/busybox", tarfile.REGTYPE, 0o755, binary)
    for applet in sorted(set(applets) - {"busybox"}):
        add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
    add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda e: e[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build_busybox_image(layout_dir: Path, ref: str = "localhost/busybox:latest") -> str:
    """Write a one-layer busybox image named ``ref`` into the layout; return the manifest digest."""
    config = {
        "architecture": goarch(),
        "os": "linux",
        "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"], "WorkingDir": "/"},
    }
    return write_image(Path(layout_dir), ref, [busybox_layer()], config)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m thingdoer.oci.busybox LAYOUT_DIR [REF]", file=sys.stderr)
        return 2
    print(build_busybox_image(Path(argv[0]), *argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
