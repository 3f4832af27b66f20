"""Images as users meet them: ``thingdoer image ls|pull|import|rm|prune`` against a real
registry, and pods whose images workerd pulls (imagePullPolicy, ErrImagePull, ImagePullBackOff
with the registry's message, and the retry that succeeds once the image exists)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import needs_etcd, needs_root, needs_runc, pod_manifest, wait_until
from .registry_helpers import layered_image, needs_registry, serving

pytestmark = [needs_registry]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    layout = tmp_path_factory.mktemp("source") / "oci"
    layered_image(layout, "layered:v1")
    return layout


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source):
    with serving(tmp_path_factory.mktemp("registry"), source) as reg:
        yield reg


def thingdoer(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "thingdoer", *args], capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"thingdoer {' '.join(args)} failed: {proc.stderr}")
    return proc


def test_cli_pull_ls_rm_prune_and_import(tmp_path, registry, source):
    state = ["--state-dir", str(tmp_path / "state")]
    ref = f"{registry.host}/test/layered:v1"
    out = thingdoer("image", "pull", *state, "--insecure-registry", registry.host, ref).stdout
    assert ref in out and "sha256:" in out
    listed = json.loads(thingdoer("image", "ls", *state, "-o", "json").stdout)
    assert [i["name"] for i in listed] == [ref] and listed[0]["size"] > 1_000_000
    table = thingdoer("image", "ls", *state).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "DIGEST", "SIZE"] and ref in table
    layers = tmp_path / "state/images/layers"
    assert len([p for p in layers.iterdir() if not p.name.startswith(".")]) == 3  # unpacked

    failed = thingdoer("image", "pull", *state, f"{registry.host}/test/layered:v1", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"--insecure-registry {registry.host}" in failed.stderr.strip().splitlines()[-1]

    assert thingdoer("image", "import", *state, "--name", "localhost/mine:1", str(source)
                     ).stdout.split() == ["localhost/mine:1"]
    thingdoer("image", "rm", *state, ref, "localhost/mine:1")
    assert json.loads(thingdoer("image", "ls", *state, "-o", "json").stdout) == []
    assert "removed" in thingdoer("image", "prune", *state).stdout
    assert [p for p in layers.iterdir() if not p.name.startswith(".")] == []
    blobs = tmp_path / "state/images/oci/blobs/sha256"
    assert list(blobs.iterdir()) == []
    missing = thingdoer("image", "rm", *state, ref, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.runc
@pytest.mark.etcd
@needs_root
@needs_runc
@needs_etcd
def test_pods_pull_their_images_and_report_pull_failures(cluster, registry, source):
    repo = f"{registry.host}/test/late-{uuid.uuid4().hex[:8]}"
    state = cluster.add_worker("node-a", extra_args=["--insecure-registry", registry.host])

    # An image the registry lacks: ErrImagePull, then ImagePullBackOff, with its message.
    late = pod_manifest("late", ["sleep", "600"])
    late["spec"]["containers"][0]["image"] = f"{repo}:v1"
    cluster.apply(late)
    seen: dict[str, str] = {}

    def waiting():
        statuses = cluster.client.get_pod("default", "late").status.containerStatuses or []
        state_ = statuses[0].state.waiting if statuses else None
        if state_ and state_.reason in ("ErrImagePull", "ImagePullBackOff"):
            seen[state_.reason] = state_.message
        return len(seen) == 2
    wait_until(waiting, what="ErrImagePull and then ImagePullBackOff")
    assert "MANIFEST_UNKNOWN" in seen["ErrImagePull"] and repo in seen["ErrImagePull"]
    assert seen["ImagePullBackOff"].startswith(f'Back-off pulling image "{repo}:v1"')
    assert cluster.client.get_pod("default", "late").status.phase == "Pending"

    # Never: an absent image is not pulled, and the reason says so.
    never = pod_manifest("never", ["true"])
    never["spec"]["containers"][0].update(image=f"{repo}:absent", imagePullPolicy="Never")
    cluster.apply(never)

    def never_pulled():
        statuses = cluster.client.get_pod("default", "never").status.containerStatuses or []
        w = statuses[0].state.waiting if statuses else None
        return w and w.reason in ("ErrImagePull", "ImagePullBackOff") and w.message
    assert "imagePullPolicy Never" in wait_until(never_pulled, what="ErrImagePull for Never")

    # A pulled multi-layer image runs, its whiteouts honoured.
    ok = pod_manifest("pulled", ["sh", "-c", "test ! -e /data/gone && ls /cfg && cat /marker "
                                             "&& exec sleep 600"])
    ok["spec"]["containers"][0]["image"] = f"{registry.host}/test/layered:v1"
    cluster.apply(ok)
    cluster.wait_phase("pulled", "Running")
    logs = [""]

    def logged() -> bool:
        logs[0] = b"".join(cluster.client.logs("default", "pulled")).decode()
        return logs[0].split() == ["new", "one"]
    try:
        wait_until(logged, what="the pulled image's files in the pod's log")
    except AssertionError as err:
        raise AssertionError(f"{err}; its log: {logs[0]!r}") from err

    # Once the image exists, the next pull after the back-off succeeds.
    registry.push(source, "layered:v1", repo.split("/", 1)[1] + ":v1")
    cluster.wait_phase("late", "Running")

    # The node's CLI refuses to remove an image a container was started from.
    refused = thingdoer("image", "rm", "--state-dir", str(state),
                        f"{registry.host}/test/layered:v1", check=False)
    assert refused.returncode == 1 and "in use by a container" in refused.stderr
