"""How the CLI shows things: kubectl-style aligned tables, JSON/YAML, and ``describe``."""

from __future__ import annotations

import json

import click
import yaml

from ..api.tables import age, pod_status_text
from ..models import Pod


class TablePrinter:
    """Prints the rows of server-side Tables with fixed columns, so watch lines stay aligned."""

    def __init__(self, table: dict, *, wide: bool, namespaces: bool = False):
        self.columns = [i for i, c in enumerate(table["columnDefinitions"]) if wide or c["priority"] == 0]
        self.headers = [table["columnDefinitions"][i]["name"].upper() for i in self.columns]
        self.namespaces = namespaces
        if namespaces:
            self.headers.insert(0, "NAMESPACE")
        self.widths: list[int] | None = None

    def _cells(self, row: dict) -> list[str]:
        cells = [str(row["cells"][i]) for i in self.columns]
        if self.namespaces:
            cells.insert(0, row.get("object", {}).get("metadata", {}).get("namespace", ""))
        return cells

    def print_table(self, table: dict) -> None:
        rows = [self._cells(r) for r in table["rows"]]
        if not rows:
            click.echo("No resources found.", err=True)
        self.widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                       for i, h in enumerate(self.headers)]
        if rows:
            click.echo(self._line(self.headers))
        for row in rows:
            click.echo(self._line(row))

    def print_rows(self, table: dict) -> None:
        for row in table["rows"]:
            cells = self._cells(row)
            if self.widths is None or not any(self.widths):
                self.widths = [max(len(h), len(c)) for h, c in zip(self.headers, cells)]
            click.echo(self._line(cells))

    def _line(self, cells: list[str]) -> str:
        widths = self.widths or [len(c) for c in cells]
        return "   ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def objects(items: list[dict], output: str, *, single: bool, list_body: dict | None = None) -> None:
    if output == "name":
        for item in items:
            click.echo(f"{item['kind'].lower()}/{item['metadata']['name']}")
        return
    body = items[0] if single else (list_body or {"apiVersion": "v1", "kind": "List", "items": items})
    if output == "json":
        click.echo(json.dumps(body, indent=4))
    else:
        click.echo(yaml.safe_dump(body, sort_keys=False).rstrip())


def describe_pod(pod: Pod) -> str:
    m, spec, status = pod.metadata, pod.spec, pod.status
    labels = ",".join(f"{k}={v}" for k, v in (m.labels or {}).items()) or "<none>"
    lines = [f"Name:         {m.name}", f"Namespace:    {m.namespace}", f"Node:         {spec.nodeName or '<none>'}"
             + (f"/{status.hostIP}" if status.hostIP else ""),
             f"Start Time:   {status.startTime or '<none>'}", f"Labels:       {labels}",
             f"Status:       {pod_status_text(pod)}"]
    if status.reason or status.message:
        lines += [f"Reason:       {status.reason or ''}", f"Message:      {status.message or ''}"]
    lines += [f"IP:           {status.podIP or '<none>'}", f"Created:      {m.creationTimestamp} "
              f"({age(m.creationTimestamp)} ago)", f"UID:          {m.uid}",
              f"Restart:      {spec.restartPolicy}", "Containers:"]
    for container in spec.containers:
        cs = pod.container_status(container.name)
        lines += [f"  {container.name}:", f"    Image:        {container.image}"]
        if cs and cs.imageID:
            lines.append(f"    Image ID:     {cs.imageID}")
        if cs and cs.containerID:
            lines.append(f"    Container ID: {cs.containerID}")
        if container.command:
            lines.append(f"    Command:      {' '.join(container.command)}")
        if container.args:
            lines.append(f"    Args:         {' '.join(container.args)}")
        lines += _state_lines(cs)
        for kind in ("limits", "requests"):
            values = getattr(container.resources, kind) or {}
            if values:
                lines.append(f"    {kind.capitalize() + ':':<14}" + ", ".join(f"{k}={v}" for k, v in values.items()))
        for env in container.env or []:
            lines.append(f"    Env:          {env.name}={env.value}")
    lines.append("Conditions:")
    for cond in status.conditions or []:
        extra = f" ({cond.reason}: {cond.message})" if cond.reason else ""
        lines.append(f"  {cond.type:<16}{cond.status}{extra}")
    if spec.nodeSelector:
        lines.append("Node-Selectors: " + ",".join(f"{k}={v}" for k, v in spec.nodeSelector.items()))
    return "\n".join(lines)


def _state_lines(cs) -> list[str]:
    if cs is None:
        return ["    State:        Waiting"]
    state = cs.state
    if state.running:
        return ["    State:        Running", f"      Started:    {state.running.startedAt}"]
    if state.terminated:
        t = state.terminated
        lines = ["    State:        Terminated", f"      Reason:     {t.reason}", f"      Exit Code:  {t.exitCode}"]
        if t.signal:
            lines.append(f"      Signal:     {t.signal}")
        if t.message:
            lines.append(f"      Message:    {t.message}")
        lines += [f"      Started:    {t.startedAt or '<none>'}", f"      Finished:   {t.finishedAt or '<none>'}"]
        return lines
    waiting = state.waiting
    lines = ["    State:        Waiting", f"      Reason:     {waiting.reason if waiting else ''}"]
    if waiting and waiting.message:
        lines.append(f"      Message:    {waiting.message}")
    return lines
