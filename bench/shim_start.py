#!/usr/bin/env python3
"""Container start through the C shim against the raw runtime, same bundle, same run.

- start:     ``shim.spawn`` (create + start, returns once the shim reports the pid) against
             ``runc run --detach`` (create + start in one call) of ``sleep``;
- lifecycle: a ``true`` container from spawn until the shim's exit file exists (create, start,
             exit, delete) against a foreground ``runc run`` of it (the same steps).

Prints JSON: p50/p99 in milliseconds of each and the p50 overhead of the shim (goal: ≤ 10 ms).
Needs root and the runtime. Usage: bench/shim_start.py [-n 30] [--runtime runc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thingdoer.cgroups import fs as cgroupfs  # noqa: E402
from thingdoer.oci import shim  # noqa: E402
from thingdoer.oci.busybox import build_busybox_image  # noqa: E402
from thingdoer.oci.image import ImageStore, prepare_rootfs, release_rootfs  # noqa: E402
from thingdoer.oci.runc import Runtime  # noqa: E402
from thingdoer.oci.spec import runtime_spec  # noqa: E402


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
            "min_ms": round(ordered[0], 2)}


def bundle(tmp: Path, image, name: str, args: list[str], cgroup_parent: str) -> Path:
    path = tmp / name
    prepare_rootfs(image, tmp / "cache", path / "rootfs")
    spec = runtime_spec(args=args, env=["PATH=/bin"], cwd="/", rootfs="rootfs", hostname=name,
                        cgroups_path=f"/{cgroup_parent}/{name}", resources=None)
    (path / "config.json").write_text(json.dumps(spec))
    return path


def reset(path: Path) -> None:
    for name in (shim.SHIM_PID, shim.INIT_PID, shim.EXIT, shim.LOG, shim.SHIM_ERR):
        (path / name).unlink(missing_ok=True)


def setup(default_n: int):
    """(args, scratch dir, cgroup parent, runtime, busybox image): what both shim benches use."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=default_n)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="thingdoer-bench-"))
    runtime = Runtime(tmp / "root", args.runtime)
    build_busybox_image(tmp / "oci")
    image = ImageStore(tmp / "oci").resolve("localhost/busybox:latest")
    return args, tmp, f"thingdoer-bench-{uuid.uuid4().hex[:8]}", runtime, image


def main() -> None:
    args, tmp, cgroup_parent, runtime, image = setup(30)
    sleeper = bundle(tmp, image, "sleeper", ["sleep", "1000"], cgroup_parent)
    quick = bundle(tmp, image, "quick", ["true"], cgroup_parent)
    results: dict[str, list[float]] = {k: [] for k in ("shim_start", "runtime_run_detach",
                                                       "shim_lifecycle", "runtime_run")}
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for i in range(args.n):
            cid = f"s{i}"
            reset(sleeper)
            t = time.perf_counter()
            started = shim.spawn(runtime, cid, sleeper)
            results["shim_start"].append((time.perf_counter() - t) * 1000)
            assert started.pid, started.error
            runtime.delete(cid, force=True)
            shim.wait_gone(sleeper, 10)

            cid = f"r{i}"
            t = time.perf_counter()
            subprocess.run(runtime.run_argv(cid, sleeper, sleeper / "raw.pid")[:-1] + ["--detach", cid],
                           stdin=devnull, stdout=devnull, stderr=devnull, check=True)
            results["runtime_run_detach"].append((time.perf_counter() - t) * 1000)
            runtime.delete(cid, force=True)

            cid = f"q{i}"
            reset(quick)
            t = time.perf_counter()
            shim.spawn(runtime, cid, quick)
            while not (quick / shim.EXIT).exists():
                time.sleep(0.0002)
            results["shim_lifecycle"].append((time.perf_counter() - t) * 1000)
            shim.wait_gone(quick, 10)

            cid = f"t{i}"
            t = time.perf_counter()
            subprocess.run(runtime.run_argv(cid, quick, quick / "raw.pid"), stdin=devnull,
                           stdout=devnull, stderr=devnull, check=True)
            results["runtime_run"].append((time.perf_counter() - t) * 1000)
    finally:
        for c in runtime.list():
            runtime.delete(c["id"], force=True)
        release_rootfs(sleeper / "rootfs")
        release_rootfs(quick / "rootfs")
        cgroupfs.remove_tree(f"/{cgroup_parent}")
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    out = {k: summary(v) for k, v in results.items()}
    out["runtime"] = args.runtime
    out["shim_start_overhead_p50_ms"] = round(out["shim_start"]["p50_ms"]
                                              - out["runtime_run_detach"]["p50_ms"], 2)
    out["shim_lifecycle_overhead_p50_ms"] = round(out["shim_lifecycle"]["p50_ms"]
                                                  - out["runtime_run"]["p50_ms"], 2)
    out["goal_overhead_ms"] = 10
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
