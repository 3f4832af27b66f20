"""Real runc: exit statuses, logs, signals, cgroup limits and the state/list/delete calls.

Each test gets its own runc --root and cgroup parent /thingdoer-test-<hex>; the fixture deletes
every container, releases every rootfs and removes the cgroup dirs runc left, even on failure.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from thingdoer.errors import NotFound
from thingdoer.oci.busybox import build_busybox_image
from thingdoer.oci.image import ImageStore, prepare_rootfs, release_rootfs
from thingdoer.oci.runc import Runtime
from thingdoer.oci.spec import runtime_spec

pytestmark = [
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc containers need root"),
    pytest.mark.skipif(not shutil.which("runc"), reason="runc is not installed"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEADLINE = 30  # seconds to wait for a container to come up: a hang guard, not a timing check


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    layout = tmp_path_factory.mktemp("layout")
    build_busybox_image(layout)
    return ImageStore(layout).resolve("localhost/busybox:latest")


class Containers:
    """Makes bundles and starts containers; remembers everything to clean up."""

    def __init__(self, tmp_path: Path, image):
        self.tmp, self.image = tmp_path, image
        self.runtime = Runtime(tmp_path / "runc-root")
        self.cgroup_parent = f"thingdoer-test-{uuid.uuid4().hex[:12]}"
        self.ids: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def bundle(self, cid: str, args: list[str], resources: dict | None = None) -> Path:
        bundle = self.tmp / cid
        prepare_rootfs(self.image, self.tmp / "cache", bundle / "rootfs")
        spec = runtime_spec(args=args, env=[], cwd="/", rootfs="rootfs", hostname=cid,
                            cgroups_path=f"/{self.cgroup_parent}/{cid}", resources=resources)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def run(self, cid: str, args: list[str], resources: dict | None = None
            ) -> subprocess.Popen:
        bundle = self.bundle(cid, args, resources)
        self.ids.append(cid)
        proc = self.runtime.spawn_run(cid, bundle, bundle / "log", bundle / "pid")
        self.procs.append(proc)
        return proc

    def log(self, cid: str) -> str:
        return (self.tmp / cid / "log").read_text()

    def wait_for(self, cid: str, proc: subprocess.Popen, ready) -> None:
        """Wait until ``ready()`` (e.g. the pid file exists); fail if runc exits first."""
        end = time.monotonic() + DEADLINE
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{cid} exited {proc.returncode} early: {self.log(cid)}")
            if time.monotonic() > end:
                pytest.fail(f"{cid} did not come up: {self.log(cid)}")
            time.sleep(0.01)

    def cgroup_dirs(self) -> list[Path]:
        return [ctrl / self.cgroup_parent for ctrl in CGROUP_ROOT.iterdir()
                if (ctrl / self.cgroup_parent).is_dir()]

    def cleanup(self) -> None:
        errors = []
        for cid in set(self.ids) | {c["id"] for c in self._listed()}:
            try:
                self.runtime.delete(cid, force=True)
            except Exception as err:
                errors.append(err)
        for proc in self.procs:
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired as err:
                proc.kill()
                errors.append(err)
        for bundle in self.tmp.iterdir():
            if (bundle / "config.json").exists():
                release_rootfs(bundle / "rootfs")
        for top in self.cgroup_dirs():  # runc removes the container's cgroup, not its parents
            for dirpath, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError as err:
                    errors.append(err)
        assert not errors, errors

    def _listed(self) -> list[dict]:
        try:
            return self.runtime.list()
        except Exception:
            return []


@pytest.fixture
def containers(tmp_path, image):
    c = Containers(tmp_path, image)
    try:
        yield c
    finally:
        c.cleanup()
        assert not c.cgroup_dirs()


def test_exit_status_and_output_reach_the_caller_and_the_log(containers):
    proc = containers.run("c1", ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert proc.wait(timeout=DEADLINE) == 3
    log = containers.log("c1")
    assert "hello\n" in log and "oops\n" in log
    assert containers.runtime.state("c1") is None  # runc run removes the container on exit


def test_runc_errors_land_in_the_log_in_runcs_words(containers):
    proc = containers.run("c1", ["/no/such/binary"])
    assert proc.wait(timeout=DEADLINE) != 0
    assert "/no/such/binary" in containers.log("c1")


def test_sigkill_gives_137_and_state_list_track_the_container(containers):
    proc = containers.run("c1", ["sleep", "1000"])
    containers.wait_for("c1", proc, (containers.tmp / "c1/pid").exists)
    state = containers.runtime.state("c1")
    assert state["status"] == "running"
    assert state["pid"] == int((containers.tmp / "c1/pid").read_text())
    assert [c["id"] for c in containers.runtime.list()] == ["c1"]
    containers.runtime.kill("c1", signal.SIGKILL)
    assert proc.wait(timeout=DEADLINE) == 128 + signal.SIGKILL
    assert containers.runtime.list() == []


def test_sigterm_reaches_the_container_init(containers):
    # PID 1 ignores signals it has no handler for, so the init installs a trap first.
    proc = containers.run("c1", ["sh", "-c", "trap 'exit 143' TERM; echo ready; sleep 1000 & wait"])
    containers.wait_for("c1", proc, lambda: "ready" in containers.log("c1"))
    containers.runtime.kill("c1", signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 143


def test_memory_limit_lands_in_the_containers_cgroup(containers):
    limit = 64 * 1024 * 1024
    proc = containers.run("c1", ["sleep", "1000"], resources={"memory": {"limit": limit}})
    containers.wait_for("c1", proc, (containers.tmp / "c1/pid").exists)
    cgroup = CGROUP_ROOT / "memory" / containers.cgroup_parent / "c1"
    assert int((cgroup / "memory.limit_in_bytes").read_text()) == limit
    pid = (containers.tmp / "c1/pid").read_text().strip()
    assert pid in (cgroup / "cgroup.procs").read_text().split()


def test_missing_containers(containers):
    assert containers.runtime.state("nope") is None
    containers.runtime.delete("nope")  # idempotent
    containers.runtime.delete("nope", force=True)
    with pytest.raises(NotFound, match="does not exist"):
        containers.runtime.kill("nope", signal.SIGTERM)


def test_version():
    assert Runtime(Path("/tmp")).version()[0].isdigit()


def test_container_outlives_the_python_process_that_started_it(containers):
    bundle = containers.bundle("c1", ["sleep", "1000"])
    containers.ids.append("c1")
    script = (
        "import sys; from pathlib import Path; from thingdoer.oci.runc import Runtime; "
        "b = Path(sys.argv[2]); "
        "Runtime(Path(sys.argv[1])).spawn_run('c1', b, b / 'log', b / 'pid')"
    )
    subprocess.run([sys.executable, "-c", script, str(containers.runtime.root), str(bundle)],
                   check=True)  # returns as soon as runc is started: the spawner is gone
    end = time.monotonic() + DEADLINE
    while not (bundle / "pid").exists():
        assert time.monotonic() < end, containers.log("c1")
        time.sleep(0.01)
    assert containers.runtime.state("c1")["status"] == "running"
