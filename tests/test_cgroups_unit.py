"""cgroups against fake cgroupfs trees in temp dirs holding real kernel output (Linux 6.1 v2,
6.18 v1 hybrid, pasted below): the parsers, both drivers' writes and reads, the pod limit
mapping, the Prometheus text, and the refusal to leave the cgroup root."""

from __future__ import annotations

from pathlib import Path

import pytest

from thingdoer.cgroups import parse
from thingdoer.cgroups.fs import CgroupFS
from thingdoer.cgroups.resources import IoMax, Limits, parse_io_max, pod_limits, v2_weight
from thingdoer.cgroups.v1 import V1
from thingdoer.cgroups.v2 import V2
from thingdoer.errors import Invalid, NotFound
from thingdoer.node.stats import prometheus

V2_CPU_STAT = """usage_usec 2500000
user_usec 2000000
system_usec 500000
core_sched.force_idle_usec 0
nr_periods 120
nr_throttled 40
throttled_usec 1600000
nr_bursts 0
burst_usec 0
"""
V2_MEMORY_STAT = """anon 20971520
file 8388608
kernel 524288
kernel_stack 16384
pagetables 65536
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 0
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 20971520
active_anon 0
inactive_file 4194304
active_file 4194304
unevictable 0
slab_reclaimable 100000
slab_unreclaimable 100000
slab 200000
"""
V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
V2_PSI = "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\nfull avg10=0.50 avg60=0.25 avg300=0.00 total=23456\n"
V2_IO_STAT = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:0 rbytes=1000 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"

V1_CPU_STAT = "nr_periods 50\nnr_throttled 10\nthrottled_time 500000000\nnr_bursts 0\nburst_time 0\n"
V1_MEMORY_STAT = """cache 9572352
rss 8200192
rss_huge 0
shmem 0
mapped_file 0
inactive_anon 0
active_anon 1531904
inactive_file 0
active_file 487424
hierarchical_memory_limit 33554432
hierarchical_memsw_limit 33554432
total_cache 9572352
total_rss 8200192
total_inactive_file 2097152
total_active_file 487424
"""
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
V1_BLKIO = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n8:0 Total 12288\nTotal 12288\n"
V1_UNLIMITED = "9223372036854771712\n"


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def v2(tmp_path) -> V2:
    write_tree(tmp_path, {
        "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
        "cgroup.subtree_control": "",
        "thingdoer/cgroup.controllers": "cpu io memory pids\n",
        "thingdoer/cgroup.subtree_control": "",
        "thingdoer/podA/cgroup.controllers": "cpu io memory pids\n",
        "thingdoer/podA/cgroup.subtree_control": "",
        "thingdoer/podA/memory.swap.max": "max\n",
        "thingdoer/podA/cpu.stat": V2_CPU_STAT, "thingdoer/podA/memory.current": "33554432\n",
        "thingdoer/podA/memory.stat": V2_MEMORY_STAT, "thingdoer/podA/memory.peak": "40000000\n",
        "thingdoer/podA/memory.events": V2_EVENTS, "thingdoer/podA/pids.current": "7\n",
        "thingdoer/podA/io.stat": V2_IO_STAT, "thingdoer/podA/cpu.pressure": V2_PSI,
        "thingdoer/podA/memory.pressure": V2_PSI,
        "thingdoer/podA/cpu.weight": "100\n", "thingdoer/podA/cpu.max": "max 100000\n",
        "thingdoer/podA/memory.max": "max\n", "thingdoer/podA/pids.max": "max\n", "thingdoer/podA/io.max": "",
    })
    return V2(CgroupFS(tmp_path))


@pytest.fixture
def v1(tmp_path) -> V1:
    controllers = ("cpu", "cpuacct", "memory", "pids", "blkio")
    files = {}
    for c in controllers:
        files[f"{c}/thingdoer/podA/cgroup.procs"] = ""
    files.update({
        "memory/thingdoer/podA/memory.memsw.limit_in_bytes": V1_UNLIMITED,
        "cpuacct/thingdoer/podA/cpuacct.usage": "1500000000\n",
        "cpu/thingdoer/podA/cpu.stat": V1_CPU_STAT, "cpu/thingdoer/podA/cpu.cfs_quota_us": "20000\n",
        "cpu/thingdoer/podA/cpu.cfs_period_us": "100000\n",
        "memory/thingdoer/podA/memory.usage_in_bytes": "16777216\n",
        "memory/thingdoer/podA/memory.stat": V1_MEMORY_STAT,
        "memory/thingdoer/podA/memory.max_usage_in_bytes": "20000000\n",
        "memory/thingdoer/podA/memory.limit_in_bytes": "33554432\n",
        "memory/thingdoer/podA/memory.oom_control": V1_OOM_CONTROL,
        "pids/thingdoer/podA/pids.current": "3\n", "pids/thingdoer/podA/pids.max": "max\n",
        "blkio/thingdoer/podA/blkio.throttle.io_service_bytes_recursive": V1_BLKIO,
        "cpu/thingdoer/podA/cpu.shares": "1024\n",
        **{f"blkio/thingdoer/podA/blkio.throttle.{op}_device": "" for op in
           ("read_bps", "write_bps", "read_iops", "write_iops")},
    })
    write_tree(tmp_path, files)
    return V1(CgroupFS(tmp_path), mounts={c: tmp_path / c for c in controllers})


# --- parse -------------------------------------------------------------------------------------

def test_parsers_read_the_kernels_formats():
    assert parse.limit("max\n") is None and parse.limit(V1_UNLIMITED) is None and parse.limit("42") == 42
    assert parse.cpu_max("max 100000\n") == (None, 100000) and parse.cpu_max("20000 100000") == (20000, 100000)
    assert parse.flat_keyed(V2_EVENTS)["oom_kill"] == 1
    assert parse.pressure(V2_PSI)["full"] == {"avg10": 0.5, "avg60": 0.25, "avg300": 0.0, "total": 23456.0}
    assert parse.io_stat(V2_IO_STAT) == (5096, 8192)
    assert parse.blkio_bytes(V1_BLKIO) == (4096, 8192)


@pytest.mark.parametrize("fn, text", [(parse.integer, "12a"), (parse.flat_keyed, "a b c"),
                                      (parse.cpu_max, "max"), (parse.nested_keyed, "8:0 rbytes")])
def test_a_malformed_file_is_invalid_naming_the_path_and_text(fn, text):
    with pytest.raises(Invalid, match=r"/x/cpu\.stat: cannot parse"):
        fn(text, "/x/cpu.stat")


# --- fs ----------------------------------------------------------------------------------------

def test_fs_refuses_paths_outside_the_root(tmp_path):
    fs = CgroupFS(tmp_path / "cg")
    with pytest.raises(Invalid, match="outside"):
        fs.path("../etc/passwd")
    with pytest.raises(Invalid, match="outside"):
        fs.write(tmp_path / "elsewhere", "1")
    with pytest.raises(NotFound, match="no such cgroup file"):
        fs.read(tmp_path / "cg" / "memory.max")


def test_a_refused_write_names_the_value_and_path(tmp_path):
    fs = CgroupFS(tmp_path)
    (tmp_path / "dir").mkdir()
    with pytest.raises(Exception, match=r'writing "64M" to .*/dir: EISDIR'):
        fs.write(tmp_path / "dir", "64M")


# --- resources --------------------------------------------------------------------------------

def test_pod_limits_sum_container_limits_only_where_all_set():
    both = pod_limits([({"cpu": "100m"}, {"cpu": "200m", "memory": "64Mi"}),
                       (None, {"cpu": "300m", "memory": "32Mi"})], None, 1024)
    assert (both.cpu_quota_us, both.memory_max, both.pids_max, both.cpu_shares) == (50_000, 96 * 2**20, 1024, 102 + 307)
    partial = pod_limits([(None, {"cpu": "200m"}), (None, {"memory": "32Mi"})], None, 1024)
    assert (partial.cpu_quota_us, partial.memory_max) == (None, None)
    besteffort = pod_limits([(None, None)], {"thingdoer.io/pids-limit": "50",
                                              "thingdoer.io/io-max": "8:0 rbps=1048576"}, 4096)
    assert (besteffort.cpu_shares, besteffort.pids_max) == (2, 50)
    assert besteffort.io_max == (IoMax("8:0", {"rbps": 1048576}),)


def test_pids_annotation_can_only_lower_the_node_default():
    assert pod_limits([(None, None)], {"thingdoer.io/pids-limit": "100000"}, 4096).pids_max == 4096


def test_shares_become_weight_as_runc_converts_them():
    assert (v2_weight(2), v2_weight(1024), v2_weight(262144)) == (1, 39, 10000)


def test_io_max_parsing_names_a_bad_line():
    with pytest.raises(ValueError, match="MAJ:MIN"):
        parse_io_max("8:0 rbps=x")


# --- v2 driver --------------------------------------------------------------------------------

def test_v2_apply_writes_each_limit_and_delegates_controllers(v2, tmp_path):
    v2.apply("/thingdoer/podA", Limits(cpu_shares=1024, cpu_quota_us=20_000, memory_max=2**26,
                                       pids_max=64, io_max=(IoMax("8:0", {"wbps": 1000}),)))
    pod = tmp_path / "thingdoer/podA"
    assert (pod / "cpu.max").read_text() == "20000 100000"
    assert (pod / "cpu.weight").read_text() == "39"
    assert (pod / "memory.max").read_text() == str(2**26)
    assert (pod / "memory.swap.max").read_text() == "0"
    assert (pod / "pids.max").read_text() == "64"
    assert (pod / "io.max").read_text() == "8:0 wbps=1000"
    assert (tmp_path / "thingdoer/cgroup.subtree_control").read_text() == "+cpu +memory +pids +io"


def test_v2_unlimited_is_max(v2, tmp_path):
    v2.apply("/thingdoer/podA", Limits())
    pod = tmp_path / "thingdoer/podA"
    assert [(pod / f).read_text() for f in ("cpu.max", "memory.max", "pids.max")] == ["max 100000", "max", "max"]
    assert (pod / "memory.swap.max").read_text() == "max\n"  # swap untouched without a limit


def test_v2_usage(v2, tmp_path):
    (tmp_path / "thingdoer/podA/cpu.max").write_text("20000 100000\n")
    (tmp_path / "thingdoer/podA/memory.max").write_text("67108864\n")
    (tmp_path / "thingdoer/podA/pids.max").write_text("max\n")
    u = v2.usage("/thingdoer/podA")
    assert u.errors == []
    assert (u.cpu_usage_seconds, u.cpu_periods, u.cpu_throttled_periods, u.cpu_throttled_seconds) == (2.5, 120, 40, 1.6)
    assert (u.memory_current, u.memory_working_set, u.memory_rss, u.memory_peak, u.memory_limit) == (
        33554432, 33554432 - 4194304, 20971520, 40000000, 67108864)
    assert (u.pids_current, u.pids_limit, u.io_read_bytes, u.io_write_bytes, u.oom_kills) == (7, None, 5096, 8192, 1)
    assert u.cpu_quota_cores == 0.2
    assert u.pressure["memory"]["some"]["avg10"] == 1.5 and "io" not in u.pressure
    assert v2.usage("/thingdoer/podB") is None


def test_a_stats_file_that_fails_is_collected_not_fatal(v2, tmp_path):
    (tmp_path / "thingdoer/podA/pids.current").write_text("garbage\n")
    u = v2.usage("/thingdoer/podA")
    assert u.memory_current == 33554432
    assert any("pids.current" in e for e in u.errors)


# --- v1 driver --------------------------------------------------------------------------------

def test_v1_apply_writes_each_limit_with_swap_off(v1, tmp_path):
    v1.apply("/thingdoer/podA", Limits(cpu_shares=512, cpu_quota_us=50_000, memory_max=2**26, pids_max=64,
                                       io_max=(IoMax("8:0", {"rbps": 10, "wiops": 5}),)))
    read = lambda c, f: (tmp_path / c / "thingdoer/podA" / f).read_text()  # noqa: E731
    assert read("cpu", "cpu.shares") == "512" and read("cpu", "cpu.cfs_quota_us") == "50000"
    assert read("memory", "memory.limit_in_bytes") == str(2**26)
    assert read("memory", "memory.memsw.limit_in_bytes") == str(2**26)
    assert read("pids", "pids.max") == "64"
    assert read("blkio", "blkio.throttle.read_bps_device") == "8:0 10"
    assert read("blkio", "blkio.throttle.write_iops_device") == "8:0 5"
    v1.apply("/thingdoer/podA", Limits())
    assert read("cpu", "cpu.cfs_quota_us") == "-1" and read("memory", "memory.limit_in_bytes") == "-1"
    assert read("memory", "memory.memsw.limit_in_bytes") == "-1" and read("pids", "pids.max") == "max"


def test_v1_usage(v1):
    u = v1.usage("/thingdoer/podA")
    assert u.errors == []
    assert (u.cpu_usage_seconds, u.cpu_periods, u.cpu_throttled_periods, u.cpu_throttled_seconds) == (1.5, 50, 10, 0.5)
    assert (u.memory_current, u.memory_working_set, u.memory_rss, u.memory_peak, u.memory_limit) == (
        16777216, 16777216 - 2097152, 8200192, 20000000, 33554432)
    assert (u.pids_current, u.pids_limit, u.io_read_bytes, u.io_write_bytes, u.oom_kills) == (3, None, 4096, 8192, 2)
    assert u.cpu_quota_cores == 0.2


def test_a_missing_controller_is_named(tmp_path):
    driver = V1(CgroupFS(tmp_path), mounts={})
    with pytest.raises(Invalid, match="memory cgroup controller is not mounted"):
        driver.exists("/thingdoer/podA")


# --- Prometheus text -------------------------------------------------------------------------

def test_prometheus_text_uses_cadvisor_names_and_labels(v2):
    usage = v2.usage("/thingdoer/podA").dump()
    stats = {"node": {"cpu_usage_seconds": 10.5, "memory_working_set": 1000, "memory_total": 2000},
             "pods": [{"namespace": "default", "name": "web", "usage": usage,
                       "containers": [{"name": "main", "usage": usage}]}]}
    text = prometheus(stats)
    assert 'container_cpu_usage_seconds_total{namespace="default",pod="web",container="main"} 2.5' in text
    assert f'container_memory_working_set_bytes{{namespace="default",pod="web",container=""}} {33554432 - 4194304}' in text
    assert 'container_oom_events_total{namespace="default",pod="web",container="main"} 1' in text
    assert "# TYPE container_cpu_cfs_throttled_periods_total counter" in text
    assert "node_memory_working_set_bytes 1000" in text


def test_limits_read_for_usage_are_cached_until_the_next_apply(v1, tmp_path):
    limit = tmp_path / "memory/thingdoer/podA/memory.limit_in_bytes"
    assert v1.usage("/thingdoer/podA").memory_limit == 33554432
    limit.write_text("1000\n")  # not through the driver: the cached value stands
    assert v1.usage("/thingdoer/podA").memory_limit == 33554432
    v1.apply("/thingdoer/podA", Limits(memory_max=2**25 * 2))
    assert v1.usage("/thingdoer/podA").memory_limit == 2**26


# --- top (the CLI's pure shaping) -------------------------------------------------------------

def test_top_rows_and_bars_show_usage_against_limits():
    from rich.console import Console

    from thingdoer.cli.top import bar, pod_rows, pods_table

    stats = [{"node": {"name": "n1"}, "pods": [
        {"namespace": "default", "name": "web", "usage": {
            "cpu_usage_cores": 0.19, "cpu_quota_cores": 0.2, "memory_working_set": 48 * 2**20,
            "memory_limit": 64 * 2**20, "pids_current": 3, "pids_limit": 4096}, "containers": []},
        {"namespace": "other", "name": "db", "usage": {}, "containers": []}]}]
    rows = pod_rows(stats, "default")
    assert [(r["name"], r["memory"], r["cpu_limit"]) for r in rows] == [("web", 48 * 2**20, 0.2)]
    assert "95%" in bar(95.0) and "red" in bar(95.0) and "no limit" in bar(None)
    console = Console(width=120, record=True)
    console.print(pods_table(rows, bars=True))
    text = console.export_text()
    assert "web" in text and "190m" in text and "48Mi" in text and "75%" in text and "3/4096" in text


# --- OOM verdicts on v2 (node/oom.py) -------------------------------------------------------

def test_v2_oom_kills_of_the_pod_are_attributed_once_to_an_exit_137(v2, tmp_path):
    from thingdoer.node.oom import oom_killed

    pod_dir = tmp_path / "state" / "pod"
    first, second, clean = (pod_dir / name for name in ("a", "b", "c"))
    for bundle in (first, second, clean):
        bundle.mkdir(parents=True)
    assert not oom_killed(v2, clean, "/thingdoer/podA", 0)            # exit 0: never an OOM
    assert oom_killed(v2, first, "/thingdoer/podA", 137)              # memory.events oom_kill 1
    assert oom_killed(v2, first, "/thingdoer/podA", 137)              # decided, and kept on disk
    assert not oom_killed(v2, second, "/thingdoer/podA", 137)         # that kill was taken
    (tmp_path / "thingdoer/podA/memory.events").write_text(V2_EVENTS.replace("oom_kill 1", "oom_kill 2"))
    assert not oom_killed(v2, second, "/thingdoer/podA", 137)         # decided once per run
    third = pod_dir / "d"
    third.mkdir()
    assert oom_killed(v2, third, "/thingdoer/podA", 137)
