"""The ``thingdoer`` command: a client of apid, and the entry point of every daemon.

Commands parse, call the API client (``api/client.py``) and print; they hold no logic of their
own. Every error ends as one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from ..api.client import DEFAULT_SERVER, Client
from ..api.tables import pod_status_text
from ..errors import ThingdoerError
from ..models import Pod, is_terminal
from . import printing

DEFAULT_STATE_DIR = Path("/var/lib/thingdoer")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a duration such as 30s, 2m or 500ms")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: use {what} as KEY=VALUE")
        result[key] = value
    return result


class Main(click.Group):
    """Turns every error into one line and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ThingdoerError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except TimeoutError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except OSError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "-s", envvar="THINGDOER_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="apid address (env THINGDOER_SERVER).")
@click.option("-v", "--verbose", count=True, help="More log output (daemons).")
@click.pass_context
def cli(ctx: click.Context, server: str, verbose: int) -> None:
    """thingdoer: a small, real container orchestrator."""
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx.obj = {"server": server}


def client(ctx: click.Context) -> Client:
    return Client(ctx.obj["server"])


namespace_option = click.option("--namespace", "-n", default="default", show_default=True)


# -- pods -----------------------------------------------------------------------------------


def load_manifests(text: str) -> list[dict]:
    """Every object in a YAML or JSON stream (``---``-separated, or a ``List``)."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise click.UsageError(f"the manifest is not valid YAML or JSON: {err}") from None
    objects = []
    for doc in documents:
        if not isinstance(doc, dict):
            raise click.UsageError("each document must be an object with apiVersion and kind")
        objects.extend(doc.get("items") or [] if doc.get("kind", "").endswith("List") else [doc])
    return objects


@cli.command()
@click.option("-f", "--filename", required=True, type=click.File("r"), help="Manifest file, or - for stdin.")
@namespace_option
@click.pass_context
def apply(ctx: click.Context, filename, namespace: str) -> None:
    """Create the pods in a manifest (YAML or JSON, several documents)."""
    objects = load_manifests(filename.read())
    if not objects:
        raise click.UsageError(f"no objects in {filename.name}")
    with client(ctx) as api:
        for obj in objects:
            if obj.get("kind") != "Pod":
                raise click.UsageError(f"kind {obj.get('kind')!r} is not supported: thingdoer applies Pods")
            try:
                pod = api.create_pod(obj, (obj.get("metadata") or {}).get("namespace") or namespace)
                click.echo(f"pod/{pod.metadata.name} created")
            except ThingdoerError as err:
                if err.reason != "AlreadyExists":
                    raise
                name = (obj.get("metadata") or {}).get("name")
                click.echo(f"pod/{name} unchanged (it exists; pods are immutable here: "
                           "delete it to change it)")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.option("--image", required=True, help="Image reference, e.g. localhost/busybox:latest.")
@click.option("--cpu", help="cpu limit (and request), e.g. 250m.")
@click.option("--memory", help="memory limit (and request), e.g. 64Mi.")
@click.option("--env", "-e", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--restart", type=click.Choice(["Never", "OnFailure", "Always"]), default="Never",
              show_default=True)
@click.option("--labels", "-l", multiple=True, help="KEY=VALUE, repeatable.")
@namespace_option
@click.argument("command", nargs=-1)
@click.pass_context
def run(ctx, name, image, cpu, memory, env, restart, labels, namespace, command) -> None:
    """Run COMMAND in a new pod NAME:  thingdoer run hello --image IMG -- echo hi"""
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    container = {"name": name, "image": image}
    if command:
        container["command"] = list(command)
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in key_values(env, "--env").items()]
    if limits:
        container["resources"] = {"limits": limits, "requests": dict(limits)}
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": key_values(labels, "--labels") or {"run": name}},
                "spec": {"restartPolicy": restart, "containers": [container]}}
    with client(ctx) as api:
        pod = api.create_pod(manifest, namespace)
    click.echo(f"pod/{pod.metadata.name} created")


@cli.command()
@click.argument("kind", type=click.Choice(["pods", "pod", "po", "nodes", "node", "no"]))
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["wide", "json", "yaml", "name"]))
@click.option("-w", "--watch", is_flag=True, help="After listing, print changes as they happen.")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", help="Label selector, e.g. app=web.")
@namespace_option
@click.pass_context
def get(ctx, kind, name, output, watch, all_namespaces, selector, namespace) -> None:
    """List pods or nodes (or show one)."""
    nodes = kind.startswith("no")
    base = "/api/v1/nodes" if nodes else Client.pods_path(None if all_namespaces else namespace)
    params = {"labelSelector": selector} if selector else {}
    if name:
        params["fieldSelector"] = f"metadata.name={name}"
    with client(ctx) as api:
        if output in ("json", "yaml", "name"):
            if name:
                obj = (api.get_node(name) if nodes else api.get_pod(namespace, name)).dump()
                printing.objects([obj], output, single=True)
            else:
                body = api.get_json(base, params)
                printing.objects(body["items"], output, single=False, list_body=body)
            return
        table = api.table(base, params)
        if name and not table["rows"]:
            kind_name = "nodes" if nodes else "pods"
            raise ThingdoerError(f'{kind_name} "{name}" not found')
        printer = printing.TablePrinter(table, wide=output == "wide", namespaces=all_namespaces and not nodes)
        printer.print_table(table)
        if watch:
            for _, event_table in api.watch(base, resource_version=table["metadata"].get("resourceVersion"),
                                            table=True, params=params):
                printer.print_rows(event_table)


@cli.command()
@click.argument("kind", type=click.Choice(["pod", "pods", "po"]))
@click.argument("name")
@namespace_option
@click.pass_context
def describe(ctx, kind, name, namespace) -> None:
    """Show a pod in detail: spec, status, containers."""
    with client(ctx) as api:
        click.echo(printing.describe_pod(api.get_pod(namespace, name)))


@cli.command()
@click.argument("kind", type=click.Choice(["pod", "pods", "po"]))
@click.argument("names", nargs=-1, required=True)
@click.option("--grace-period", type=int, help="Seconds to wait after SIGTERM before SIGKILL.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the pod is gone.")
@click.option("--timeout", type=duration, default="60s", show_default=True)
@namespace_option
@click.pass_context
def delete(ctx, kind, names, grace_period, wait, timeout, namespace) -> None:
    """Delete pods: their containers get SIGTERM, then SIGKILL after the grace period."""
    with client(ctx) as api:
        for name in names:
            api.delete_pod(namespace, name, grace_period=grace_period)
            if wait:
                _wait_gone(api, namespace, name, timeout)
            click.echo(f'pod "{name}" deleted')


def _wait_gone(api: Client, namespace: str, name: str, timeout: float) -> None:
    try:
        api.wait_pod(namespace, name, lambda pod: False, timeout)
    except ThingdoerError as err:
        if err.reason == "NotFound":
            return
        raise


@cli.command()
@click.argument("pod")
@click.option("-c", "--container")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=int, help="Only the last N lines.")
@click.option("--since", type=duration, help="Only lines newer than a duration, e.g. 5m.")
@click.option("--since-time", help="Only lines at or after an RFC 3339 time.")
@click.option("--timestamps", is_flag=True, help="Start each line with its time.")
@click.option("-p", "--previous", is_flag=True, help="The last run of a restarted container.")
@namespace_option
@click.pass_context
def logs(ctx, pod, container, follow, tail, since, since_time, timestamps, previous, namespace) -> None:
    """Print a container's output (stdout and stderr)."""
    out = sys.stdout.buffer
    with client(ctx) as api:
        for chunk in api.logs(namespace, pod, container=container, follow=follow, tail_lines=tail,
                              since_seconds=None if since is None else int(since + 0.999),
                              since_time=since_time, timestamps=timestamps, previous=previous):
            out.write(chunk)
            out.flush()


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.option("-c", "--container")
@namespace_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx, pod, container, namespace, command) -> None:
    """Run COMMAND in a running container:  thingdoer exec POD [-c C] -- CMD ARGS...

    Its stdout and stderr are streamed here; thingdoer exits with its exit code."""
    from ..models import streams

    with client(ctx) as api:
        for channel, data in api.exec(namespace, pod, list(command), container=container):
            if channel == streams.STATUS:
                try:
                    code = streams.exit_code(json.loads(data))
                except ValueError as err:
                    raise ThingdoerError(str(err)) from None
                sys.exit(code)
            out = sys.stdout.buffer if channel == streams.STDOUT else sys.stderr.buffer
            out.write(data)
            out.flush()
    raise ThingdoerError("the exec stream ended without the command's exit status")


@cli.command()
@click.argument("kind", type=click.Choice(["pod", "pods", "po"]))
@click.argument("name")
@click.option("--for", "condition", required=True,
              help="phase=PHASE (e.g. phase=Succeeded), condition=Ready, or delete.")
@click.option("--timeout", type=duration, default="30s", show_default=True)
@namespace_option
@click.pass_context
def wait(ctx, kind, name, condition, timeout, namespace) -> None:
    """Wait until a pod reaches a phase, becomes Ready, or is deleted."""
    check = _condition(condition)
    with client(ctx) as api:
        if condition == "delete":
            _wait_gone(api, namespace, name, timeout)
            click.echo(f"pod/{name} deleted")
            return
        try:
            pod = api.wait_pod(namespace, name, check, timeout)
        except TimeoutError:
            pod = api.get_pod(namespace, name)
            raise TimeoutError(f"timed out after {timeout:g}s waiting for pod/{name} {condition}: "
                               f"it is {pod_status_text(pod)}") from None
        click.echo(f"pod/{name} condition met ({condition})")


def _condition(text: str):
    kind, _, value = text.partition("=")
    if text == "delete":
        return None
    if kind == "phase" and value:
        def phase_reached(pod: Pod) -> bool:
            if pod.status.phase == value:
                return True
            if is_terminal(pod.status.phase):
                raise ThingdoerError(f"pod/{pod.metadata.name} ended {pod.status.phase} "
                                     f"({pod_status_text(pod)}), not {value}")
            return False
        return phase_reached
    if kind == "condition" and value:
        return lambda pod: any(c.type == value and c.status == "True" for c in pod.status.conditions or [])
    raise click.BadParameter(f"{text!r}: use phase=PHASE, condition=NAME or delete", param_hint="--for")


# -- images ---------------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Local images of this node."""


@image.command("build-busybox")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--ref", default="localhost/busybox:latest", show_default=True)
def build_busybox(state_dir: Path, ref: str) -> None:
    """Build an image from this host's busybox-static into the node's image store."""
    from ..oci.busybox import build_busybox_image

    digest = build_busybox_image(state_dir / "images" / "oci", ref)
    click.echo(f"{ref} {digest}")


from .images import register as _register_image_commands  # noqa: E402 (needs the group)

_register_image_commands(image, DEFAULT_STATE_DIR)

from .top import register as _register_top  # noqa: E402 (needs the group)

_register_top(cli, client)


# -- daemons --------------------------------------------------------------------------------


etcd_option = click.option("--etcd-endpoints", envvar="THINGDOER_ETCD", default="http://127.0.0.1:2379",
                           show_default=True, help="Comma-separated etcd client URLs.")
prefix_option = click.option("--etcd-prefix", default="/thingdoer", show_default=True)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:7070")
    return host, int(port)


def agent_options(fn):
    options = [
        click.option("--node-name", default=lambda: socket.gethostname().lower(), help="Node name [hostname]."),
        click.option("--address", default="127.0.0.1", show_default=True,
                     help="Address the agent API listens on and publishes on its Node."),
        click.option("--port", "agent_port", type=int, default=10250, show_default=True, help="Agent API port."),
        click.option("--label", "labels", multiple=True, help="Node label KEY=VALUE, repeatable."),
        click.option("--cpu", help="cpu capacity to report instead of the host's, e.g. 4."),
        click.option("--memory", help="memory capacity to report instead of the host's, e.g. 8Gi."),
        click.option("--reserved-cpu", default="0", show_default=True, help="cpu kept from pods."),
        click.option("--reserved-memory", default="0", show_default=True, help="memory kept from pods."),
        click.option("--runtime", default="runc", show_default=True, help="OCI runtime binary (runc or crun)."),
        click.option("--insecure-registry", "insecure_registries", multiple=True, metavar="HOST:PORT",
                     help="Registry pulled from over plain HTTP (e.g. one on loopback), repeatable."),
        click.option("--registry-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Docker-style config.json with registry credentials (auths)."),
        click.option("--cgroup-parent", default="thingdoer", show_default=True,
                     help="cgroup under which pod cgroups are made."),
        click.option("--pids-limit", type=click.IntRange(min=1), default=4096, show_default=True,
                     help="Default pids.max of each pod (a fork bomb stops there)."),
        click.option("--container-log-max-size", "log_max_size", default="10Mi", show_default=True,
                     help="Size at which a container's log file is rotated (a quantity: 10Mi)."),
        click.option("--container-log-max-files", "log_max_files", type=click.IntRange(min=1), default=5,
                     show_default=True, help="Log files kept per container, the live one included."),
        click.option("--lease-ttl", type=int, default=3, show_default=True, help="Node lease TTL, seconds."),
        click.option("--renew-interval", type=float, default=1.0, show_default=True,
                     help="Seconds between lease renewals."),
        click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR,
                     show_default=True),
        click.option("--network-mode", type=click.Choice(["builtin", "flannel", "none"]), default="builtin",
                     show_default=True, help="Pod network: builtin (lease a flannel subnet, route it), "
                     "flannel (a flanneld owns subnet and routes), none (loopback only)."),
        click.option("--bridge", default="cni0", show_default=True, help="Bridge the pods' veths are on."),
        click.option("--public-ip", help="Address other nodes reach this one at [default route's]."),
        click.option("--subnet-env", type=click.Path(path_type=Path), default="/run/flannel/subnet.env",
                     show_default=True, help="flannel's subnet.env (builtin writes it, flannel reads it)."),
        click.option("--flannel-prefix", default="/coreos.com/network", show_default=True,
                     help="etcd prefix of the flannel network (flanneld's --etcd-prefix)."),
        click.option("--network-repair-interval", type=float, default=10.0, show_default=True,
                     help="Seconds between checks of the node's routes (builtin)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def log_size(text: str) -> int:
    from ..models import quantity

    try:
        size = int(quantity.parse(text))
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}", param_hint="--container-log-max-size") from None
    if size < 1024:
        raise click.BadParameter(f"{text!r}: use at least 1Ki", param_hint="--container-log-max-size")
    return size


def agent_config(o: dict):
    from ..models import quantity
    from ..models.meta import check_dns_subdomain
    from ..node.agent import AgentConfig
    from ..node.containers import NodeConfig

    try:
        check_dns_subdomain(o["node_name"])
    except ValueError as err:
        raise click.BadParameter(f"{o['node_name']!r}: {err}", param_hint="--node-name") from None
    capacity = {k: v for k, v in (("cpu", o["cpu"]), ("memory", o["memory"])) if v}
    for flag, value in [("--cpu", o["cpu"]), ("--memory", o["memory"]),
                        ("--reserved-cpu", o["reserved_cpu"]), ("--reserved-memory", o["reserved_memory"])]:
        try:
            if value is not None and quantity.parse(value) < 0:
                raise ValueError("must not be negative")
        except ValueError as err:
            raise click.BadParameter(f"{value!r}: {err}", param_hint=flag) from None
    if o["lease_ttl"] < 1 or o["renew_interval"] <= 0 or o["renew_interval"] >= o["lease_ttl"]:
        raise click.BadParameter("the renew interval must be positive and shorter than the lease TTL",
                                 param_hint="--renew-interval")
    return AgentConfig(
        name=o["node_name"], address=o["address"], port=o["agent_port"],
        labels=key_values(o["labels"], "--label"), capacity=capacity,
        reserved={"cpu": o["reserved_cpu"], "memory": o["reserved_memory"]},
        lease_ttl=o["lease_ttl"], renew_interval=o["renew_interval"],
        node=NodeConfig(state_dir=o["state_dir"], runtime=o["runtime"], cgroup_parent=o["cgroup_parent"],
                        pids_limit=o["pids_limit"], log_max_size=log_size(o["log_max_size"]),
                        log_max_files=o["log_max_files"],
                        insecure_registries=tuple(o["insecure_registries"]),
                        registry_config=o["registry_config"]),
        network=network_options(o))


def network_options(o: dict):
    from ipaddress import IPv4Address

    from ..node.network import NetworkOptions

    if o["public_ip"]:
        try:
            IPv4Address(o["public_ip"])
        except ValueError as err:
            raise click.BadParameter(f"{o['public_ip']!r}: {err}", param_hint="--public-ip") from None
    if not 0 < len(o["bridge"]) < 16 or "/" in o["bridge"] or " " in o["bridge"]:
        raise click.BadParameter(f"{o['bridge']!r}: an interface name of 1 to 15 characters",
                                 param_hint="--bridge")
    return NetworkOptions(mode=o["network_mode"], bridge=o["bridge"], public_ip=o["public_ip"],
                          subnet_env=o["subnet_env"], flannel_prefix=o["flannel_prefix"],
                          repair_interval=o["network_repair_interval"])


@cli.command()
@etcd_option
@prefix_option
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT to serve on.")
def apid(etcd_endpoints, etcd_prefix, listen) -> None:
    """Run the API server."""
    from .daemons import apid as run_apid, run_until_signalled, with_store

    host, port = host_port(listen)
    run_until_signalled(lambda: with_store(etcd_endpoints, etcd_prefix,
                                           lambda store, keys: run_apid(store, keys, host, port)))


@cli.command()
@etcd_option
@prefix_option
def schedulerd(etcd_endpoints, etcd_prefix) -> None:
    """Run the scheduler."""
    from .daemons import run_until_signalled, schedulerd as run_scheduler, with_store

    run_until_signalled(lambda: with_store(etcd_endpoints, etcd_prefix, run_scheduler))


@cli.command()
@etcd_option
@prefix_option
@click.option("--resync", type=float, default=10.0, show_default=True, help="Seconds between full checks.")
def reaperd(etcd_endpoints, etcd_prefix, resync) -> None:
    """Run the reaper (marks pods of dead nodes NodeLost)."""
    from .daemons import reaperd as run_reaper, run_until_signalled, with_store

    run_until_signalled(lambda: with_store(etcd_endpoints, etcd_prefix,
                                           lambda store, keys: run_reaper(store, keys, resync)))


@cli.command()
@etcd_option
@prefix_option
@agent_options
def workerd(etcd_endpoints, etcd_prefix, **options) -> None:
    """Run the node agent: register this node and run the pods bound to it."""
    from .daemons import run_until_signalled, with_store, workerd as run_workerd

    config = agent_config(options)
    run_until_signalled(lambda: with_store(etcd_endpoints, etcd_prefix,
                                           lambda store, keys: run_workerd(store, keys, config)))


@cli.command()
@click.option("--etcd-port", type=int, default=2379, show_default=True,
              help="Client port of the local etcd (its peer port is the next one).")
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="apid HOST:PORT.")
@prefix_option
@click.option("--detach", "-d", is_flag=True, help="Run in the background; return once the cluster is ready.")
@click.option("--timeout", type=duration, default="60s", show_default=True, help="With --detach: how long to wait.")
@agent_options
def up(etcd_port, listen, etcd_prefix, detach, timeout, **options) -> None:
    """Run a whole cluster on this host: etcd, apid, schedulerd, reaperd and workerd."""
    config = agent_config(options)
    state_dir: Path = options["state_dir"]
    host, port = host_port(listen)
    if detach:
        _detach(state_dir, host, port, config.name, timeout)
        return
    from .daemons import run_until_signalled, up as run_up

    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / "up.pid"
    _refuse_if_running(pid_file)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        run_until_signalled(lambda: run_up(state_dir, etcd_port=etcd_port, api_host=host, api_port=port,
                                           agent=config, prefix=etcd_prefix))
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()


def _running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is still a ``thingdoer up``."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    args = cmdline.split(b"\0")
    return pid if b"up" in args and any(b"thingdoer" in a for a in args) else None


def _refuse_if_running(pid_file: Path) -> None:
    pid = _running_pid(pid_file)
    if pid is not None and pid != os.getpid():
        raise ThingdoerError(f"a cluster is already running from {pid_file.parent} (pid {pid}): "
                             "thingdoer down stops it")


def _detach(state_dir: Path, host: str, port: int, node: str, timeout: float) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    _refuse_if_running(state_dir / "up.pid")
    argv = [a for a in sys.argv[1:] if a not in ("--detach", "-d")]
    log_path = state_dir / "up.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "thingdoer", "-v", *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    with Client(f"http://{host}:{port}", timeout=2) as api:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise ThingdoerError(f"the cluster exited with status {proc.returncode}: "
                                     + " | ".join(tail) + f" (log: {log_path})")
            try:
                if api.get_node(node).ready:
                    click.echo(f"cluster up (pid {proc.pid}): apid at http://{host}:{port}, "
                               f"node {node}, log {log_path}")
                    return
            except ThingdoerError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"the cluster was not ready within {timeout:g}s: see {log_path}")


@cli.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--timeout", type=duration, default="30s", show_default=True)
def down(state_dir: Path, timeout: float) -> None:
    """Stop a cluster started with ``up --detach`` (its containers keep running)."""
    pid = _running_pid(state_dir / "up.pid")
    if pid is None:
        click.echo(f"no cluster is running from {state_dir}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        raise TimeoutError(f"the cluster (pid {pid}) did not stop within {timeout:g}s")
    click.echo(f"cluster stopped (pid {pid})")


def main() -> None:
    cli(prog_name="thingdoer")

