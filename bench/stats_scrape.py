#!/usr/bin/env python3
"""Stats scrape cost and agent memory with many running pods.

Starts etcd, apid, schedulerd and one workerd (real processes, as the tests do), then:

- agent RSS with 0 pods, then with N running pods (``sleep``, limits set);
- the collector alone (``node/stats.py``) in this process over the same cgroups;
- ``/stats`` and ``/metrics`` of the agent over HTTP: M scrapes each, p50/p99 ms;
- peer: the same cgroup files read raw in this process (open+read, no parsing, no HTTP) —
  the floor any collector pays; the ratio says what our parsing and serving add.

Prints JSON. Goal: /stats p50 ≤ 50 ms for 100 pods. Needs root, runc and etcd.
Usage: bench/stats_scrape.py [-n 100] [-m 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import Cluster, free_port_pair, pod_manifest, wait_until  # noqa: E402
from thingdoer.cgroups.driver import detect  # noqa: E402
from thingdoer.cgroups.fs import hierarchies  # noqa: E402
from thingdoer.models import Pod, parse_object  # noqa: E402
from thingdoer.node.stats import Collector  # noqa: E402
from thingdoer.cluster.etcd_server import EtcdServer  # noqa: E402
from thingdoer.oci.busybox import build_busybox_image  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def timed(fn, m: int) -> dict:
    samples = []
    for _ in range(m):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    ordered = sorted(samples)
    return {"n": m, "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(ordered[min(m - 1, round(0.99 * (m - 1)))], 2)}


def raw_read(paths: list[Path]) -> None:
    for path in paths:
        try:
            with open(path) as f:
                f.read()
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="running pods")
    parser.add_argument("-m", type=int, default=30, help="scrapes per measurement")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="thingdoer-bench-stats-"))
    layout = tmp / "images" / "oci"
    build_busybox_image(layout)
    port = free_port_pair()
    etcd = EtcdServer(tmp / "etcd", client_port=port, peer_port=port + 1)
    etcd.start()
    cluster = Cluster(tmp, etcd, "/bench-stats", layout)
    try:
        cluster.start_control_plane()
        cluster.add_worker("bench", cpu="64", memory="64Gi", lease_ttl=30)  # a busy machine must not lose it
        agent = cluster.procs["workerd-bench"]
        node = cluster.client.get_node("bench")
        base = f"http://127.0.0.1:{node.status.daemonEndpoints.kubeletEndpoint.Port}"
        time.sleep(1)
        rss_empty = rss_kib(agent.pid)
        for i in range(args.n):
            cluster.apply(pod_manifest(f"p{i:03d}", ["sleep", "3600"], cpu="10m", memory="16Mi",
                                       grace=0))
        wait_until(lambda: sum(p.status.phase == "Running" for p in cluster.client.list_pods("default")[0])
                   == args.n, timeout=600, what=f"{args.n} pods Running")
        http = httpx.Client(timeout=30)
        stats = http.get(base + "/stats").json()
        assert len(stats["pods"]) == args.n, len(stats["pods"])
        uids = [p["uid"] for p in stats["pods"]]
        files = []
        for h in hierarchies():
            for uid in uids:
                for scope in (f"pod{uid}", f"pod{uid}/main"):
                    d = h / cluster.cgroup_parent / scope
                    files += [f for f in d.glob("*") if f.name.split(".")[0] in
                              ("cpu", "cpuacct", "memory", "pids", "blkio", "io") and f.is_file()]
        files = [f for f in files if f.name in {
            "cpu.stat", "cpuacct.usage", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max",
            "memory.usage_in_bytes", "memory.current", "memory.stat", "memory.max_usage_in_bytes",
            "memory.peak", "memory.limit_in_bytes", "memory.max", "memory.oom_control",
            "memory.events", "pids.current", "pids.max", "io.stat", "cpu.pressure",
            "memory.pressure", "io.pressure", "blkio.throttle.io_service_bytes_recursive"}]
        # the collector alone, in this process, over the same cgroups: the agent's cost minus HTTP
        pods = {p["uid"]: parse_object(Pod, {"metadata": {"name": p["name"], "namespace": p["namespace"],
                                                          "uid": p["uid"]},
                                             "spec": {"containers": [{"name": "main", "image": "x"}]}})
                for p in stats["pods"]}
        collector = Collector(detect(), lambda uid, c=None: f"/{cluster.cgroup_parent}/pod{uid}" + (f"/{c}" if c else ""), lambda: pods, "bench")
        collector.collect()
        result = {
            "pods": args.n,
            "collect_in_process": timed(collector.collect, args.m),
            "cgroup_mode": stats["node"]["cgroup_mode"],
            "stats_http": timed(lambda: http.get(base + "/stats").raise_for_status(), args.m),
            "metrics_http": timed(lambda: http.get(base + "/metrics").raise_for_status(), args.m),
            "peer_raw_read": {**timed(lambda: raw_read(files), args.m), "files": len(files)},
            "agent_rss_kib": {"pods_0": rss_empty, f"pods_{args.n}": rss_kib(agent.pid)},
        }
        result["ratio_stats_vs_raw_p50"] = round(result["stats_http"]["p50_ms"] / result["peer_raw_read"]["p50_ms"], 2)
        result["goal_stats_p50_le_50ms"] = result["stats_http"]["p50_ms"] <= 50
        print(json.dumps(result, indent=2))
    finally:
        cluster.stop()
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
