#!/usr/bin/env python3
"""Resident memory per running container of the C shim, against a foreground ``runc run``
(the process that would supervise the container without a shim) in the same run.

Starts N ``sleep`` containers through the shim and N through ``runc run``, then reads each
supervising process's VmRSS and Pss (``/proc/<pid>/smaps_rollup``: shared pages split between
the processes mapping them). Prints JSON with medians in KiB; goal: shim RSS ≤ 1024 KiB.
Needs root and the runtime. Usage: bench/shim_rss.py [-n 10] [--runtime runc]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thingdoer.cgroups import fs as cgroupfs  # noqa: E402
from thingdoer.oci import shim  # noqa: E402
from thingdoer.oci.image import release_rootfs  # noqa: E402
from shim_start import bundle as make_bundle, setup  # noqa: E402  (the same set-up as that bench)


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) in KiB."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
               if line.startswith("Pss:"))
    return rss, pss


def main() -> None:
    args, tmp, cgroup_parent, runtime, image = setup(10)
    bundles, procs = [], []
    shims, raws = [], []
    try:
        for i in range(2 * args.n):
            bundle = make_bundle(tmp, image, f"c{i}", ["sleep", "1000"], cgroup_parent)
            bundles.append(bundle)
            if i < args.n:
                assert shim.spawn(runtime, f"c{i}", bundle).pid
                shims.append(shim.supervisor_pid(bundle))
            else:
                procs.append(runtime.spawn_run(f"c{i}", bundle, bundle / "log", bundle / "pid"))
                while not (bundle / "pid").exists():
                    time.sleep(0.005)
                raws.append(procs[-1].pid)
        time.sleep(0.5)  # let the runtime's processes settle
        shim_mem = [memory_kib(pid) for pid in shims]
        raw_mem = [memory_kib(pid) for pid in raws]
    finally:
        for c in runtime.list():
            runtime.delete(c["id"], force=True)
        for proc in procs:
            proc.wait(10)
        for bundle in bundles:
            shim.wait_gone(bundle, 10)
            release_rootfs(bundle / "rootfs")
        cgroupfs.remove_tree(f"/{cgroup_parent}")
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    out = {
        "runtime": args.runtime, "n": args.n,
        "shim": {"rss_kib_p50": statistics.median(r for r, _ in shim_mem),
                 "pss_kib_p50": statistics.median(p for _, p in shim_mem)},
        f"{args.runtime}_run_foreground": {"rss_kib_p50": statistics.median(r for r, _ in raw_mem),
                                           "pss_kib_p50": statistics.median(p for _, p in raw_mem)},
        "goal_rss_kib": 1024,
    }
    out["shim_rss_ratio_to_runtime"] = round(out["shim"]["rss_kib_p50"]
                                             / out[f"{args.runtime}_run_foreground"]["rss_kib_p50"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
