#!/usr/bin/env python3
"""Pod start latency of the all-in-one cluster against raw ``runc run`` of the same bundle.

Starts ``thingdoer up`` in a scratch state dir on free ports, then, one pod after another:

- submit→Succeeded: N pods running ``true`` (client clock: POST sent → the watch shows Succeeded);
- submit→Running:   N pods running ``sleep 60`` (POST sent → the watch shows Running);
- raw runc:         N × ``runc run`` of the bundle thingdoer generated for the first ``true`` pod.

Prints JSON: p50/p99 in milliseconds of each and the p50 ratio thingdoer/runc. Needs root,
runc and etcd. Usage: bench/pod_start.py [-n 30] [--runtime runc]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thingdoer.api.client import Client  # noqa: E402
from thingdoer.cgroups import fs as cgroupfs  # noqa: E402
from thingdoer.errors import ThingdoerError  # noqa: E402
from thingdoer.node.containers import Containers, NodeConfig  # noqa: E402
from thingdoer.oci.busybox import build_busybox_image  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(percentile(values, 0.99), 2), "min_ms": round(min(values), 2)}


def pod(name: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "localhost/busybox:latest", "command": command,
                        # cpu as a request (shares), not a limit: a 100m quota on the pod cgroup
                        # throttles runc's own init too (~10 ms of cpu per 100 ms), which would
                        # measure the throttle, not thingdoer (both sides would be ~100 ms).
                        "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "32Mi"}}}]}}


class Watcher(threading.Thread):
    """Records when each pod was first seen in each phase (monotonic clock)."""

    def __init__(self, server: str, resource_version: str):
        super().__init__(daemon=True)
        self.client = Client(server)
        self.resource_version = resource_version
        self.seen: dict[tuple[str, str], float] = {}
        self.last: dict[str, dict] = {}
        self.events: queue.Queue = queue.Queue()

    def run(self) -> None:
        try:
            for _, obj in self.client.watch("/api/v1/namespaces/default/pods",
                                            resource_version=self.resource_version):
                stamp = time.monotonic()
                key = (obj["metadata"]["name"], obj["status"]["phase"])
                self.last[key[0]] = obj
                if key not in self.seen:
                    self.seen[key] = stamp
                    self.events.put(key)
        except ThingdoerError:
            pass  # the cluster was stopped at the end of the run

    def wait_for(self, name: str, phase: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while (name, phase) not in self.seen:
            if (name, "Failed") in self.seen:
                status = json.dumps(self.last[name]["status"].get("containerStatuses"))
                raise RuntimeError(f"pod {name} failed: {status}")
            try:
                self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"pod {name} never reached {phase}") from None
        return self.seen[(name, phase)]


def raw_runc(bundle: Path, runtime: str, n: int) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="bench-runc-"))
    times = []
    try:
        for i in range(n):
            start = time.monotonic()
            subprocess.run([runtime, "--root", str(root), "run", "--bundle", str(bundle),
                            f"bench-raw-{i}"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            times.append((time.monotonic() - start) * 1000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="pods per series")
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-thingdoer-"))
    api_port, etcd_port, agent_port = free_port(), free_port(), free_port()
    cgroup_parent = f"thingdoer-bench-{uuid.uuid4().hex[:8]}"
    build_busybox_image(state / "images" / "oci")
    server = f"http://127.0.0.1:{api_port}"
    up = subprocess.run([sys.executable, "-m", "thingdoer", "up", "--detach", "--state-dir", str(state),
                         "--listen", f"127.0.0.1:{api_port}", "--etcd-port", str(etcd_port),
                         "--node-name", "bench", "--port", str(agent_port), "--runtime", args.runtime,
                         "--cgroup-parent", cgroup_parent,
                         # like raw runc: no pod network (and the host's network is left alone)
                         "--network-mode", "none"], capture_output=True, text=True)
    if up.returncode != 0:
        print(up.stderr, file=sys.stderr)
        return 1
    client = Client(server)
    try:
        _, revision = client.list_pods()
        watcher = Watcher(server, revision)
        watcher.start()
        time.sleep(0.2)  # let the watch open before the first submit

        succeeded, running = [], []
        for i in range(args.n):
            start = time.monotonic()
            client.create_pod(pod(f"true-{i}", ["true"]))
            succeeded.append((watcher.wait_for(f"true-{i}", "Succeeded") - start) * 1000)
        for i in range(args.n):
            start = time.monotonic()
            client.create_pod(pod(f"sleep-{i}", ["sleep", "60"]))
            running.append((watcher.wait_for(f"sleep-{i}", "Running") - start) * 1000)
            client.delete_pod("default", f"sleep-{i}", grace_period=0)

        first = client.get_pod("default", "true-0")
        bundle = state / "pods" / first.metadata.uid / "main"
        runc = raw_runc(bundle, args.runtime, args.n)
    finally:
        client.close()
        subprocess.run([sys.executable, "-m", "thingdoer", "down", "--state-dir", str(state)],
                       capture_output=True)
        containers = Containers(NodeConfig(state_dir=state, cgroup_parent=cgroup_parent))
        for uid in containers.pods_on_disk():
            containers.remove_pod(uid)
        cgroupfs.remove_tree(f"/{cgroup_parent}")
        shutil.rmtree(state, ignore_errors=True)

    result = {
        "benchmark": "pod_start", "runtime": args.runtime, "pods_per_series": args.n,
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "thingdoer_submit_to_succeeded": summary(succeeded),
        "thingdoer_submit_to_running": summary(running),
        "raw_runc_run": summary(runc),
        "ratio_succeeded_p50_vs_runc_p50": round(statistics.median(succeeded) / statistics.median(runc), 2),
        "goal": "ratio <= 3",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
