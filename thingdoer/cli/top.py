"""``thingdoer top pods|nodes [-o json] [--watch]`` and ``thingdoer stats POD``: cgroup usage
as the node agents measure it (``node/stats.py``), fetched through apid's node proxy
(``/api/v1/nodes/{node}/proxy/stats``). Thin: fetch, shape rows (pure), print with rich.
Registered on the main group by ``register``.
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..errors import ThingdoerError

BAR = 12


# -- shaping (pure) ----------------------------------------------------------------------------

def cores(value: float | None) -> str:
    return "-" if value is None else f"{round(value * 1000)}m"


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}Mi" if value >= 2**20 else f"{value / 1024:.0f}Ki"


def percent(used: float | None, limit: float | None) -> float | None:
    return None if used is None or not limit else 100.0 * used / limit


def bar(pct: float | None, width: int = BAR) -> str:
    """``█████░░░░░░░ 41%``, red past 90 %, yellow past 70 %; blank without a limit."""
    if pct is None:
        return "[dim]no limit[/dim]"
    filled = min(width, round(width * pct / 100))
    colour = "red" if pct >= 90 else "yellow" if pct >= 70 else "green"
    return f"[{colour}]{'█' * filled}[/{colour}][dim]{'░' * (width - filled)}[/dim] {pct:3.0f}%"


def pod_rows(all_stats: list[dict], namespace: str | None) -> list[dict]:
    rows = []
    for stats in all_stats:
        for pod in stats["pods"]:
            if namespace and pod["namespace"] != namespace:
                continue
            u = pod["usage"]
            rows.append({"namespace": pod["namespace"], "name": pod["name"], "node": stats["node"]["name"],
                         "cpu": u.get("cpu_usage_cores"), "cpu_limit": u.get("cpu_quota_cores"),
                         "memory": u.get("memory_working_set"), "memory_limit": u.get("memory_limit"),
                         "pids": u.get("pids_current"), "pids_limit": u.get("pids_limit"),
                         "oom_kills": u.get("oom_kills")})
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))


def node_rows(all_stats: list[dict], capacity: dict[str, tuple[float, int]]) -> list[dict]:
    rows = []
    for stats in all_stats:
        n = stats["node"]
        cpu_cap, mem_cap = capacity.get(n["name"], (None, n.get("memory_total")))
        rows.append({"name": n["name"], "cpu": n.get("cpu_usage_cores"), "cpu_capacity": cpu_cap,
                     "memory": n.get("memory_working_set"), "memory_capacity": mem_cap,
                     "pods": len(stats["pods"]), "cgroup_mode": n.get("cgroup_mode")})
    return sorted(rows, key=lambda r: r["name"])


def _table(*columns: str) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col)
    return t


def _share(used, whole, bars: bool) -> str:
    """used/whole as a bar (live view) or a percentage."""
    pct = percent(used, whole)
    return bar(pct) if bars else _pct(pct)


def pods_table(rows: list[dict], bars: bool) -> Table:
    t = _table("NAMESPACE", "NAME", "CPU(cores)", "CPU/LIMIT", "MEMORY", "MEMORY/LIMIT", "PIDS")
    for r in rows:
        t.add_row(r["namespace"], r["name"], cores(r["cpu"]), _share(r["cpu"], r["cpu_limit"], bars),
                  mib(r["memory"]), _share(r["memory"], r["memory_limit"], bars),
                  f"{r['pids'] if r['pids'] is not None else '-'}/{r['pids_limit'] or 'max'}")
    return t


def nodes_table(rows: list[dict], bars: bool) -> Table:
    t = _table("NAME", "CPU(cores)", "CPU%", "MEMORY", "MEMORY%", "PODS", "CGROUPS")
    for r in rows:
        t.add_row(r["name"], cores(r["cpu"]), _share(r["cpu"], r["cpu_capacity"], bars), mib(r["memory"]),
                  _share(r["memory"], r["memory_capacity"], bars), str(r["pods"]), r["cgroup_mode"] or "-")
    return t


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


# -- fetching ----------------------------------------------------------------------------------

def fetch_stats(client) -> tuple[list[dict], dict[str, tuple[float, int]]]:
    """Every Ready node's ``/stats``, and each node's allocatable (cores, bytes)."""

    out, capacity = [], {}
    for node in client.list_nodes():
        if not node.ready:
            continue
        millis, nbytes = node.allocatable()
        capacity[node.metadata.name] = (millis / 1000, nbytes)
        try:
            out.append(client.get_json(f"/api/v1/nodes/{node.metadata.name}/proxy/stats"))
        except ThingdoerError as err:
            click.echo(f"warning: node {node.metadata.name}: {err}", err=True)
    return out, capacity


def register(cli: click.Group, make_client) -> None:
    @cli.command()
    @click.argument("what", type=click.Choice(["pods", "nodes", "pod", "node"]), default="pods")
    @click.option("-n", "--namespace", default=None, help="Only this namespace (pods).")
    @click.option("-o", "--output", type=click.Choice(["json"]))
    @click.option("-w", "--watch", is_flag=True, help="A live view that refreshes, with bars of usage against limits.")
    @click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes.")
    @click.pass_context
    def top(ctx, what, namespace, output, watch, interval):
        """Usage of pods (against their limits) or nodes (against allocatable)."""
        client = make_client(ctx)

        def render(bars: bool):
            all_stats, capacity = fetch_stats(client)
            if what.startswith("pod"):
                rows = pod_rows(all_stats, namespace)
                return rows, pods_table(rows, bars)
            rows = node_rows(all_stats, capacity)
            return rows, nodes_table(rows, bars)

        if output == "json":
            click.echo(json.dumps(render(False)[0], indent=2))
            return
        console = Console()
        if not watch:
            console.print(render(False)[1])
            return
        with Live(render(True)[1], console=console, auto_refresh=False, screen=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(render(True)[1], refresh=True)
            except KeyboardInterrupt:
                pass

    @cli.command()
    @click.argument("pod")
    @click.option("-n", "--namespace", default="default", show_default=True)
    @click.option("-o", "--output", type=click.Choice(["json"]))
    @click.pass_context
    def stats(ctx, pod, namespace, output):
        """One pod's full cgroup figures, per container."""
        client = make_client(ctx)
        p = client.get_pod(namespace, pod)
        if not p.spec.nodeName:
            raise ThingdoerError(f'pod "{pod}" is not scheduled yet: it has no cgroup to read')
        node_stats = client.get_json(f"/api/v1/nodes/{p.spec.nodeName}/proxy/stats")
        entry = next((e for e in node_stats["pods"] if (e["namespace"], e["name"]) == (namespace, pod)), None)
        if entry is None:
            raise ThingdoerError(f'pod "{pod}" has no cgroup on node {p.spec.nodeName} (not started, or ended)')
        if output == "json":
            click.echo(json.dumps(entry, indent=2))
            return
        Console().print(stats_table(entry, p.spec.nodeName))


def stats_table(entry: dict, node: str) -> Table:
    t = Table(title=f"pod {entry['namespace']}/{entry['name']} on {node}", box=None,
              header_style="bold", title_justify="left", pad_edge=False)
    t.add_column("")
    scopes = [("pod", entry["usage"])] + [(c["name"], c["usage"]) for c in entry["containers"]]
    for name, _ in scopes:
        t.add_column(name, justify="right")
    for label, fmt in FIGURES:
        t.add_row(label, *(fmt(u) for _, u in scopes))
    return t


def _psi(resource: str, kind: str):
    def fmt(u: dict) -> str:
        p = u.get("pressure", {}).get(resource, {}).get(kind)
        return "-" if not p else f"{p['avg10']:.2f} / {p['avg60']:.2f}"
    return fmt


def _n(key: str):
    return lambda u: "-" if u.get(key) is None else str(u[key])


def _s(key: str):
    return lambda u: "-" if u.get(key) is None else f"{u[key]:.2f}s"


FIGURES = [
    ("cpu (cores)", lambda u: cores(u.get("cpu_usage_cores"))),
    ("cpu limit", lambda u: cores(u.get("cpu_quota_cores")) if u.get("cpu_quota_cores") else "none"),
    ("cpu total", _s("cpu_usage_seconds")),
    ("throttled periods", lambda u: f"{u.get('cpu_throttled_periods') or 0}/{u.get('cpu_periods') or 0}"),
    ("throttled time", _s("cpu_throttled_seconds")),
    ("memory current", lambda u: mib(u.get("memory_current"))),
    ("memory working set", lambda u: mib(u.get("memory_working_set"))),
    ("memory rss", lambda u: mib(u.get("memory_rss"))),
    ("memory peak", lambda u: mib(u.get("memory_peak"))),
    ("memory limit", lambda u: mib(u.get("memory_limit")) if u.get("memory_limit") else "none"),
    ("oom kills", _n("oom_kills")),
    ("pids", lambda u: f"{u.get('pids_current', '-')}/{u.get('pids_limit') or 'max'}"),
    ("io read", lambda u: mib(u.get("io_read_bytes"))),
    ("io written", lambda u: mib(u.get("io_write_bytes"))),
    ("cpu pressure some 10s/60s", _psi("cpu", "some")),
    ("memory pressure some", _psi("memory", "some")),
    ("memory pressure full", _psi("memory", "full")),
    ("io pressure some", _psi("io", "some")),
]
