"""The shim with crun: crun refuses hybrid cgroup hosts like these ("cgroups in hybrid mode not
supported"), so ``test_shim.py`` runs again inside the project's cgroup v2 VM
(``tests/vm/run.sh``) with crun (runc is tested on the host)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO, needs_root, needs_runc

needs_qemu = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86 is not installed")
needs_crun = pytest.mark.skipif(not shutil.which("crun"), reason="crun is not installed")
pytestmark = [pytest.mark.vm, needs_root, needs_runc, needs_crun, needs_qemu]


def test_the_shim_works_with_crun_on_cgroup_v2():
    inside = ["env", "THINGDOER_REQUIRE_ALL_TIERS=1", "THINGDOER_RUNTIMES=crun",
              str(REPO / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
              "tests/test_shim.py"]
    run = subprocess.run([str(REPO / "tests/vm/run.sh"), "-t", "400", "--", *inside], cwd=REPO,
                         capture_output=True, text=True, timeout=450)
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "[crun]" in run.stdout and " passed" in run.stdout and "skipped" not in run.stdout, report
