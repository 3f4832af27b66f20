"""Pulling from a real registry (Debian's docker-registry on loopback, fed by skopeo) and
importing layouts and tarballs: auth, manifest kinds, platform choice, verification,
concurrency, interruption, whiteouts in the resulting rootfs, and tar-slip refusal."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from thingdoer.errors import BadRequest, Invalid, NotFound, Unavailable
from thingdoer.oci import reference
from thingdoer.oci.busybox import (DEFAULT_PATH, INDEX_TYPE, add_to_index,
                                   busybox_layer, goarch, write_blob, write_image)
from thingdoer.oci.image import REF_NAME, ImageStore, prepare_rootfs, release_rootfs
from thingdoer.oci.registry import Settings, import_path, parse_challenge, pull

from .conftest import needs_root
from .registry_helpers import (PASSWORD, USER, layered_image, needs_registry, serving, start_registry,
                               tar_of)

pytestmark = needs_registry


# ---- pure parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, name", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("me/app", "docker.io/me/app:latest"),
    ("index.docker.io/me/app:v1", "docker.io/me/app:v1"),
    ("localhost/busybox", "localhost/busybox:latest"),
    ("127.0.0.1:5000/a/b:v2", "127.0.0.1:5000/a/b:v2"),
    ("quay.io/x/y@sha256:" + "a" * 64, "quay.io/x/y@sha256:" + "a" * 64),
    ("x:1@sha256:" + "b" * 64, "docker.io/library/x:1@sha256:" + "b" * 64),
])
def test_references_normalize_like_docker(text, name):
    assert reference.parse(text).name == name


@pytest.mark.parametrize("text, why", [
    ("Busybox", "lowercase"), ("a@sha256:abc", "64 lowercase hex"), ("a:b:c", "lowercase components"), ("a:b@c", "digest"), ("a:-x", "tag"),
    ("", "lowercase"), ("a/../b", "lowercase"),
])
def test_bad_references_are_invalid_naming_the_problem(text, why):
    with pytest.raises(Invalid, match=why):
        reference.parse(text)


@pytest.mark.parametrize("policy, image, present, pulls", [
    (None, "r.io/a:latest", True, True),      # :latest defaults to Always
    (None, "r.io/a", True, True),
    (None, "r.io/a:v1", True, False),         # a tag defaults to IfNotPresent
    (None, "r.io/a:v1", False, True),
    (None, "r.io/a@sha256:" + "c" * 64, True, False),
    ("Always", "r.io/a:v1", True, True),
    ("IfNotPresent", "r.io/a:latest", True, False),
    ("Never", "r.io/a:latest", False, False),
    ("Always", "localhost/busybox:latest", True, False),  # node-local: never pulled
])
def test_pull_policy_is_kubernetes(policy, image, present, pulls):
    assert reference.should_pull(policy, image, present) is pulls


def test_challenge_and_config_credentials():
    assert parse_challenge('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"'
                           ) == ("bearer", {"realm": "https://a/token", "service": "reg",
                                            "scope": "repository:x:pull"})
    auth = base64.b64encode(b"u:p:w").decode()
    settings = Settings(auths={"https://index.docker.io/v1/": {"auth": auth},
                               "r.io:5000": {"username": "x", "password": "y"}})
    assert settings.credentials("docker.io") == ("u", "p:w")
    assert settings.credentials("r.io:5000") == ("x", "y")
    assert settings.credentials("other.io") is None


# ---- a real registry ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    layout = tmp_path_factory.mktemp("source") / "oci"
    layered_image(layout, "layered:v1")
    layered_image(layout, "layered:v2", marker="two")  # shares all but the top layer
    return layout


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source):
    with serving(tmp_path_factory.mktemp("registry"), source) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory, source):
    reg = start_registry(tmp_path_factory.mktemp("token-registry"), token_auth=True)
    try:
        reg.push(source, "layered:v1", "public/layered:v1")
        reg.push(source, "layered:v1", "private/layered:v1")
        yield reg
    finally:
        reg.stop()


def store_of(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images" / "oci")


def named(store: ImageStore) -> list[str]:
    return [i.name for i in store.images()]


def test_pull_names_the_image_canonically_and_verifies_every_blob(tmp_path, registry, source):
    store = store_of(tmp_path)
    image = pull(f"{registry.host}/test/layered:v1", store, Settings(frozenset([registry.host])))
    assert named(store) == [f"{registry.host}/test/layered:v1"]
    assert image.manifest_digest == ImageStore(source).resolve("layered:v1").manifest_digest
    assert len(image.layers) == 3
    # by digest too, and the pinned digest resolves locally afterwards
    pinned = f"{registry.host}/test/layered@{image.manifest_digest}"
    assert pull(pinned, store, Settings(frozenset([registry.host]))).manifest_digest == \
        image.manifest_digest
    assert store.resolve(pinned).manifest_digest == image.manifest_digest


def test_registry_errors_carry_the_registrys_message(tmp_path, registry):
    store = store_of(tmp_path)
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        pull(f"{registry.host}/test/layered:nope", store, Settings(frozenset([registry.host])))
    with pytest.raises(Unavailable, match=f"--insecure-registry {registry.host}"):
        pull(f"{registry.host}/test/layered:v1", store)  # HTTPS to a plain-HTTP registry
    assert named(store) == []


def test_docker_schema2_and_a_multi_platform_index_pick_this_host(tmp_path, registry, source):
    other = "arm64" if goarch() != "arm64" else "amd64"
    layout = tmp_path / "multi"
    mine = write_image(layout, "mine", [busybox_layer()],
                       {"architecture": goarch(), "os": "linux", "config": {"Env": [DEFAULT_PATH]}})
    theirs = write_image(layout, "theirs", [tar_of(("x", b"x\n", ""))],
                         {"architecture": other, "os": "linux", "config": {}})
    descs = {d["annotations"][REF_NAME]: d
             for d in json.loads((layout / "index.json").read_text())["manifests"]}
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        {k: v for k, v in descs[n].items() if k != "annotations"} for n in ("theirs", "mine")]
    }).encode()
    add_to_index(layout, "multi", {"mediaType": INDEX_TYPE, "digest": write_blob(layout, index),
                                   "size": len(index), "annotations": {REF_NAME: "multi"}})
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                    f"oci:{layout}:multi", f"docker://{registry.host}/test/multi:v1"],
                   check=True, capture_output=True)
    subprocess.run(["skopeo", "copy", "--quiet", "--format", "v2s2", "--dest-tls-verify=false",
                    f"oci:{source}:layered:v1", f"docker://{registry.host}/test/v2s2:v1"],
                   check=True, capture_output=True)
    store = store_of(tmp_path)
    settings = Settings(frozenset([registry.host]))
    assert pull(f"{registry.host}/test/multi:v1", store, settings).manifest_digest == mine != theirs
    v2s2 = pull(f"{registry.host}/test/v2s2:v1", store, settings)
    manifest = json.loads((store.root / "blobs/sha256" / v2s2.manifest_digest[7:]).read_text())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert v2s2.config["config"]["Env"] == [DEFAULT_PATH]


def test_bearer_token_auth_anonymous_and_with_config_credentials(tmp_path, token_registry):
    store = store_of(tmp_path)
    insecure = frozenset([token_registry.host])
    token_registry.token_requests.clear()
    pull(f"{token_registry.host}/public/layered:v1", store, Settings(insecure))
    assert token_registry.token_requests == [
        {"user": None, "scope": ["repository:public/layered:pull"]}]

    with pytest.raises(BadRequest, match="UNAUTHORIZED"):
        pull(f"{token_registry.host}/private/layered:v1", store, Settings(insecure))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {token_registry.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    pull(f"{token_registry.host}/private/layered:v1", store,
         Settings.load([token_registry.host], config))
    assert token_registry.token_requests[-1]["user"] == USER
    config.write_text(json.dumps({"auths": {token_registry.host: {"username": USER,
                                                                  "password": "wrong"}}}))
    with pytest.raises(BadRequest, match="wrong user or password"):
        pull(f"{token_registry.host}/private/layered:v1", store_of(tmp_path / "b"),
             Settings.load([token_registry.host], config))
    assert named(store) == sorted(f"{token_registry.host}/{r}/layered:v1"
                                  for r in ("private", "public"))


def test_concurrent_pulls_download_each_blob_once(tmp_path, registry):
    store = store_of(tmp_path)
    settings = Settings(frozenset([registry.host]))
    fetched: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def progress(kind, digest, size, n):
        if kind == "done" and n:
            fetched.append(digest)

    def one():
        try:
            barrier.wait()
            pull(f"{registry.host}/test/layered:v1", store, settings, progress,
                 tmp_path / "images" / "layers")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    image = store.resolve(f"{registry.host}/test/layered:v1")
    assert sorted(fetched) == sorted([_config_digest(store, image)]
                                     + [d for d, _ in image.layers])
    layer_dirs = [p.name for p in (tmp_path / "images" / "layers").iterdir()
                  if not p.name.startswith(".")]
    assert sorted(layer_dirs) == sorted(d[7:] for d, _ in image.layers)


def _config_digest(store: ImageStore, image) -> str:
    manifest = json.loads((store.root / "blobs/sha256" / image.manifest_digest[7:]).read_text())
    return manifest["config"]["digest"]


def test_an_interrupted_pull_leaves_nothing_half_written(tmp_path, registry):
    store = store_of(tmp_path)
    settings = Settings(frozenset([registry.host]))
    seen = []

    def die(kind, digest, size, n):
        if kind == "advance":
            seen.append(digest)
            if len(set(seen)) == 3:  # in the middle of the second layer
                raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pull(f"{registry.host}/test/layered:v1", store, settings, die)
    assert named(store) == []
    blobs = store.root / "blobs" / "sha256"
    assert [p.name for p in blobs.iterdir() if p.name.startswith(".")] == []  # no partial
    for path in blobs.iterdir():  # what is there is whole
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    whole = len(list(blobs.iterdir()))
    assert store.prune(None)[0] == whole and not list(blobs.iterdir())  # unnamed: pruned
    pull(f"{registry.host}/test/layered:v1", store, settings)  # and a new pull completes
    assert named(store) == [f"{registry.host}/test/layered:v1"]


def test_a_blob_that_does_not_match_its_digest_is_refused_and_not_kept(tmp_path, registry,
                                                                      source, tmp_path_factory):
    # A registry of its own whose stored layer we corrupt behind its back.
    reg = start_registry(tmp_path / "reg")
    try:
        reg.push(source, "layered:v1", "test/corrupt:v1")
        top = ImageStore(source).resolve("layered:v1").layers[-1][0][7:]
        data = tmp_path / f"reg/data/docker/registry/v2/blobs/sha256/{top[:2]}/{top}/data"
        data.write_bytes(b"x" * len(data.read_bytes()))
        store = store_of(tmp_path)
        with pytest.raises(Invalid, match=f"sha256:{top}"):
            pull(f"{reg.host}/test/corrupt:v1", store, Settings(frozenset([reg.host])))
        assert named(store) == [] and not store.has_blob(f"sha256:{top}")
    finally:
        reg.stop()


@needs_root
def test_whiteouts_and_opaque_dirs_are_honoured_in_the_rootfs(tmp_path, registry):
    store = store_of(tmp_path)
    image = pull(f"{registry.host}/test/layered:v1", store, Settings(frozenset([registry.host])),
                 layers_dir=tmp_path / "layers")
    for overlay in (True, False):
        rootfs = tmp_path / f"bundle-{overlay}" / "rootfs"
        try:
            assert prepare_rootfs(image, tmp_path / "layers", rootfs, overlay=overlay) == (
                "overlay" if overlay else "copy")
            assert (rootfs / "data/keep").read_text() == "keep\n"
            assert not (rootfs / "data/gone").exists()       # .wh.gone
            assert sorted(p.name for p in (rootfs / "cfg").iterdir()) == ["new"]  # opaque
            assert (rootfs / "marker").read_text() == "one\n"
            assert (rootfs / "bin/busybox").exists()
        finally:
            release_rootfs(rootfs)


# ---- import -------------------------------------------------------------------------------------

def _tar_dir(root: Path, out: Path, extra: list[tuple[str, bytes]] = ()) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_import_an_oci_layout_and_an_oci_archive(tmp_path, source):
    store = store_of(tmp_path)
    names = ["docker.io/library/layered:v1", "docker.io/library/layered:v2"]  # as Docker's
    assert sorted(import_path(source, store)) == names
    archive = _tar_dir(source, tmp_path / "image.tar")
    other = store_of(tmp_path / "b")
    import_path(archive, other, None, tmp_path / "b/layers")
    assert named(other) == names
    assert other.resolve("layered:v2").manifest_digest == \
        ImageStore(source).resolve("layered:v2").manifest_digest


def test_import_a_docker_save_tarball(tmp_path):
    layers = [busybox_layer(), tar_of(("hello", b"hi\n", ""))]
    config = json.dumps({"architecture": goarch(), "os": "linux",
                         "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(x).hexdigest() for x in layers]}}).encode()
    members = [("abc.json", config)] + [(f"l{i}/layer.tar", x) for i, x in enumerate(layers)]
    members.append(("manifest.json", json.dumps([{
        "Config": "abc.json", "RepoTags": ["example.com/saved:1"],
        "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]).encode()))
    tarball = tmp_path / "saved.tar"
    with tarfile.open(tarball, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = store_of(tmp_path)
    assert import_path(tarball, store, None, tmp_path / "layers") == ["example.com/saved:1"]
    image = store.resolve("example.com/saved:1")
    assert image.config["config"]["Cmd"] == ["sh"]
    assert [d for d, _ in image.layers] == json.loads(config)["rootfs"]["diff_ids"]
    assert (tmp_path / "layers" / image.layers[1][0][7:] / "hello").read_text() == "hi\n"


def test_tar_slip_archives_are_refused_and_nothing_is_imported(tmp_path, source):
    store = store_of(tmp_path)
    for i, name in enumerate(["../evil", "/etc/evil", "blobs/../../evil"]):
        archive = _tar_dir(source, tmp_path / f"slip{i}.tar", [(name, b"evil")])
        with pytest.raises(Invalid, match="tar slip"):
            import_path(archive, store)
    assert named(store) == [] and not (tmp_path / "evil").exists()


def test_a_layer_that_escapes_is_refused_its_blob_deleted_and_the_image_not_named(tmp_path):
    layout = tmp_path / "evil"
    write_image(layout, "evil:v1", [tar_of(("link", None, "../../.."), ("link/passwd", b"x", ""))],
                {"architecture": goarch(), "os": "linux", "config": {}})
    store = store_of(tmp_path)
    with pytest.raises(Invalid, match='member "link/passwd" refused'):
        import_path(layout, store, None, tmp_path / "layers")
    evil = ImageStore(layout).resolve("evil:v1").layers[0][0]
    assert named(store) == [] and not store.has_blob(evil)
    assert [p for p in (tmp_path / "layers").iterdir() if not p.name.startswith(".lock")] == []


def test_prune_keeps_named_and_in_use_images_only(tmp_path, source):
    store = store_of(tmp_path)
    import_path(source, store, None, tmp_path / "layers")
    v1 = store.resolve("layered:v1")
    v2 = store.resolve("layered:v2")
    store.untag("layered:v1")
    store.untag("layered:v2")
    store.prune(tmp_path / "layers", keep={v1.manifest_digest})  # v1 in use by a container
    assert store.resolve(f"x/y@{v1.manifest_digest}").layers == v1.layers  # still whole
    top_v2 = v2.layers[-1][0]
    assert not store.has_blob(top_v2) and not store.has_blob(v2.manifest_digest)
    assert not (tmp_path / "layers" / top_v2[7:]).exists()
    assert all((tmp_path / "layers" / d[7:]).is_dir() for d, _ in v1.layers)
    with pytest.raises(NotFound):
        store.untag("layered:v1")
