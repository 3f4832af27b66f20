"""Images in an OCI layout: building busybox, resolving refs, safe unpacking, rootfs prep."""

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from thingdoer.errors import Invalid, NotFound
from thingdoer.oci.busybox import build_busybox_image, write_image
from thingdoer.oci.image import ImageStore, prepare_rootfs, release_rootfs, unpack

REF = "localhost/busybox:latest"
CONFIG = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mount)")


# ---- tar builders: (name, type, extra) entries → uncompressed tar bytes ------------------------

def f(name, data=b"x", mode=0o644, uid=0, gid=0, mtime=1_000_000):
    return name, tarfile.REGTYPE, dict(data=data, mode=mode, uid=uid, gid=gid, mtime=mtime)


def d(name, mode=0o755, mtime=1_000_000):
    return name, tarfile.DIRTYPE, dict(mode=mode, mtime=mtime)


def sym(name, target):
    return name, tarfile.SYMTYPE, dict(linkname=target)


def hard(name, target):
    return name, tarfile.LNKTYPE, dict(linkname=target)


def dev(name, kind=tarfile.CHRTYPE):
    return name, kind, dict(devmajor=1, devminor=3)


def tar_of(*entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = extra.pop("data", None)
            for k, v in extra.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def image_of(layout, *layers, compress=True):
    write_image(layout, "test:1", [tar_of(*layer) for layer in layers], CONFIG, compress=compress)
    return ImageStore(layout).resolve("test:1")


# ---- building and resolving ---------------------------------------------------------------------

def test_busybox_image_is_a_deterministic_oci_image(tmp_path):
    layout = tmp_path / "layout"
    digest = build_busybox_image(layout)
    assert build_busybox_image(layout) == digest  # rebuilding gives the same bytes
    build_busybox_image(layout, "other:1")
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert sorted(names) == [REF, "other:1"]  # same ref replaced, another ref added
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"

    image = ImageStore(layout).resolve(REF)
    assert image.manifest_digest == digest
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert image.config["os"] == "linux" and image.config["architecture"] == "amd64"
    assert image.config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"], "WorkingDir": "/"}
    [(layer_digest, media_type)] = image.layers
    assert media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    raw = gzip.decompress((layout / "blobs/sha256" / layer_digest[7:]).read_bytes())
    assert image.config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]


def test_skopeo_reads_the_layout_by_ref_name(tmp_path):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    digest = build_busybox_image(tmp_path / "layout")
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'layout'}:{REF}"],
                         check=True, capture_output=True)
    assert "sha256:" + hashlib.sha256(out.stdout).hexdigest() == digest


def test_resolve_accepts_a_missing_tag_as_latest_and_names_unknown_refs(tmp_path):
    build_busybox_image(tmp_path)
    store = ImageStore(tmp_path)
    assert store.resolve("localhost/busybox").manifest_digest == store.resolve(REF).manifest_digest
    with pytest.raises(NotFound, match='image "busybox" not found'):
        store.resolve("busybox")  # docker.io/library/busybox:latest, not localhost/busybox
    with pytest.raises(NotFound, match="pull, build or import it first"):
        ImageStore(tmp_path / "nothing").resolve(REF)  # a node that has no image yet


def test_corrupt_config_blob_is_refused_naming_it(tmp_path):
    build_busybox_image(tmp_path)
    manifest_digest = ImageStore(tmp_path).resolve(REF).manifest_digest
    manifest = json.loads((tmp_path / "blobs/sha256" / manifest_digest[7:]).read_text())
    config_path = tmp_path / "blobs/sha256" / manifest["config"]["digest"][7:]
    config_path.write_text(config_path.read_text().replace('"sh"', '"xx"'))
    with pytest.raises(Invalid, match=manifest["config"]["digest"]):
        ImageStore(tmp_path).resolve(REF)


# ---- unpacking ----------------------------------------------------------------------------------

def test_unpack_busybox_gives_a_working_rootfs(tmp_path):
    build_busybox_image(tmp_path / "layout")
    rootfs = tmp_path / "rootfs"
    unpack(ImageStore(tmp_path / "layout").resolve(REF), rootfs)
    assert os.readlink(rootfs / "bin/sh") == "busybox"
    assert os.access(rootfs / "bin/busybox", os.X_OK)
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    assert "nobody" in (rootfs / "etc/passwd").read_text()
    if os.geteuid() == 0:
        out = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", "echo $((6*7))"],
                             check=True, capture_output=True, text=True).stdout
        assert out == "42\n"


def test_unpack_refuses_a_non_empty_rootfs(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs/keep").write_text("mine")
    with pytest.raises(Invalid, match="not an empty directory"):
        unpack(image_of(tmp_path / "layout", [f("a")]), tmp_path / "rootfs")
    assert (tmp_path / "rootfs/keep").read_text() == "mine"


@needs_root
def test_unpack_preserves_owners_modes_mtimes_links_and_fifos(tmp_path):
    image = image_of(tmp_path / "layout", [
        d("dir", mode=0o750, mtime=2_000_000),
        f("dir/suid", mode=0o4755, uid=1234, gid=5678, mtime=3_000_000),
        hard("dir/hard", "dir/suid"),
        sym("dir/sym", "/nowhere"),
        ("dir/fifo", tarfile.FIFOTYPE, dict(mode=0o600)),
    ], compress=False)
    rootfs = tmp_path / "rootfs"
    unpack(image, rootfs)
    st = os.stat(rootfs / "dir/suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert st.st_mtime == 3_000_000
    assert os.stat(rootfs / "dir/hard").st_ino == st.st_ino
    assert os.readlink(rootfs / "dir/sym") == "/nowhere"
    assert stat.S_ISFIFO(os.lstat(rootfs / "dir/fifo").st_mode)
    assert stat.S_IMODE(os.stat(rootfs / "dir").st_mode) == 0o750
    assert os.stat(rootfs / "dir").st_mtime == 2_000_000  # set after its children were written


def test_whiteouts_delete_files_and_make_dirs_opaque(tmp_path):
    image = image_of(tmp_path / "layout",
                     [f("a/gone"), f("a/kept"), f("d/old"), f("d/sub/old"), f("w/x"), f("keep")],
                     [f("a/.wh.gone"), f("d/.wh..wh..opq"), f("d/new"), f(".wh.w")])
    rootfs = tmp_path / "rootfs"
    unpack(image, rootfs)
    found = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    assert found == ["a", "a/kept", "d", "d/new", "keep"]


def test_opaque_dir_keeps_what_its_own_layer_wrote_before_the_marker(tmp_path):
    image = image_of(tmp_path / "layout", [f("d/old")], [f("d/new"), f("d/.wh..wh..opq")])
    unpack(image, tmp_path / "rootfs")
    assert sorted(os.listdir(tmp_path / "rootfs/d")) == ["new"]


def test_absolute_symlinks_are_followed_inside_the_rootfs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    image = image_of(tmp_path / "layout", [sym("lnk", str(outside)), f("lnk/inside", b"ok")])
    rootfs = tmp_path / "rootfs"
    unpack(image, rootfs)
    assert os.listdir(outside) == []
    assert (rootfs / str(outside).lstrip("/") / "inside").read_bytes() == b"ok"


ESCAPES = {
    "absolute path": [f("/abs-evil")],
    "dotdot": [f("../evil")],
    "inner dotdot": [f("a/../../evil")],
    "write through escaping symlink": [sym("lnk", "../../../../../../../../../tmp"),
                                       f("lnk/evil")],
    "write through symlink to parent": [sym("up", ".."), f("up/evil")],
    "symlink chain": [d("a"), sym("a/b", "../c"), sym("c", "../.."), f("a/b/evil")],
    "absolute hardlink": [hard("h", "/etc/passwd")],
    "dotdot hardlink": [hard("h", "../outside/secret")],
    "hardlink through symlink": [sym("s", "/etc"), hard("h", "s/passwd")],
    "char device": [dev("dev/null")],
    "block device": [dev("dev/sda", tarfile.BLKTYPE)],
}


@pytest.mark.parametrize("entries", ESCAPES.values(), ids=ESCAPES.keys())
def test_unpack_refuses_escapes_and_leaves_nothing(tmp_path, entries):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    image = image_of(tmp_path / "layout", [f("first")], entries)
    bad_member = entries[-1][0]
    with pytest.raises(Invalid) as exc:
        unpack(image, tmp_path / "rootfs")
    assert image.layers[1][0] in str(exc.value) and f'"{bad_member}"' in str(exc.value)
    assert not (tmp_path / "rootfs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "outside"]  # no temp dir
    assert os.listdir(outside) == ["secret"] and (outside / "secret").read_text() == "secret"
    assert not (tmp_path / "evil").exists()


def test_escape_through_a_symlink_from_a_lower_layer_is_refused(tmp_path):
    image = image_of(tmp_path / "layout", [sym("lnk", "../..")], [f("lnk/evil")])
    with pytest.raises(Invalid, match=f'{image.layers[1][0]}.*"lnk/evil"'):
        unpack(image, tmp_path / "rootfs")
    assert not (tmp_path / "rootfs").exists()


@pytest.mark.parametrize("compress", [True, False])
def test_layer_digest_mismatch_is_refused(tmp_path, compress):
    layout = tmp_path / "layout"
    image = image_of(layout, [f("a", b"good")], compress=compress)
    blob = layout / "blobs/sha256" / image.layers[0][0][7:]
    if compress:
        blob.write_bytes(blob.read_bytes()[:-20] + b"\0" * 20)  # a broken gzip stream
    else:
        blob.write_bytes(tar_of(f("a", b"evil")))  # a well-formed tar, just not this one
    with pytest.raises(Invalid, match=f"does not match digest {image.layers[0][0]}"):
        unpack(image, tmp_path / "rootfs")
    assert not (tmp_path / "rootfs").exists()


# ---- per-container rootfs -----------------------------------------------------------------------

@pytest.fixture
def rootfs(tmp_path):
    path = tmp_path / "bundle" / "rootfs"
    try:
        yield path
    finally:
        release_rootfs(path)


@needs_root
@pytest.mark.parametrize("overlay", [True, False])
def test_prepare_rootfs_shares_unpacked_layers_and_release_undoes_it(tmp_path, rootfs, overlay):
    build_busybox_image(tmp_path / "layout")
    image = ImageStore(tmp_path / "layout").resolve(REF)
    cache = tmp_path / "layers"
    assert prepare_rootfs(image, cache, rootfs, overlay=overlay) == (
        "overlay" if overlay else "copy")
    mounted = str(rootfs) in Path("/proc/self/mounts").read_text()
    assert mounted == overlay
    layer_dirs = [p for p in cache.iterdir() if not p.name.startswith(".")] if overlay else []
    # overlay: one dir per layer, named by its digest; copy: the layers applied into the rootfs
    assert [p.name for p in layer_dirs] == ([image.layers[0][0][7:]] if overlay else [])

    (rootfs / "etc/passwd").write_text("changed")
    for lower in layer_dirs:
        assert (lower / "etc/passwd").read_text() != "changed"  # a layer is never written

    other = tmp_path / "bundle2" / "rootfs"
    try:
        inodes = [p.stat().st_ino for p in layer_dirs]
        prepare_rootfs(image, cache, other, overlay=overlay)
        assert [p.stat().st_ino for p in layer_dirs] == inodes  # reused, not unpacked again
        assert "nobody" in (other / "etc/passwd").read_text()
    finally:
        release_rootfs(other)

    release_rootfs(rootfs)
    release_rootfs(rootfs)  # idempotent
    assert os.listdir(rootfs.parent) == []
    assert str(rootfs) not in Path("/proc/self/mounts").read_text()
