"""The cgroup v2 tier: boots the project's own QEMU runner (``tests/vm/run.sh``: Debian's
stock kernel, pure cgroup v2, the host's root over 9p) once and runs
``tests/vm/inside_cgroup_v2.py`` there. These hosts are hybrid v1, so this is where v2's
limits, OOM kills and figures are proven on a real kernel."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO, needs_root, needs_runc

needs_qemu = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86 is not installed")
pytestmark = [pytest.mark.vm, needs_root, needs_runc, needs_qemu]


def test_cgroup_v2_behaviours_hold_inside_a_vm():
    inside = ["env", "THINGDOER_REQUIRE_ALL_TIERS=1", str(REPO / ".venv/bin/python"), "-m", "pytest", "-q",
              "-p", "no:cacheprovider", "-rA", "tests/vm/inside_cgroup_v2.py"]
    run = subprocess.run([str(REPO / "tests/vm/run.sh"), "-t", "400", "--", *inside], cwd=REPO,
                         capture_output=True, text=True, timeout=450)
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout and "skipped" not in run.stdout, report
