"""Pod network speed, each against a peer measured in the same run (root; prints one JSON object).

1. wire: ``Network.wire`` + ``unwire`` of one pod (netns, veth on the bridge, address, lo,
   default route, hosts/resolv.conf) vs the same steps done with the ``ip`` command, as a
   shell-out CNI-like plugin would. Goal: wire p50 ≤ 20 ms.
2. latency: UDP round trips pod → pod across two hosts (host-gw routes programmed by
   ``Network.sync_routes`` from two leases) vs host → host on the same link.

Everything runs inside network namespaces this script makes (two "hosts" on a bridge in a
third) and removes at the end; no traffic leaves them.

    sudo .venv/bin/python bench/net_pods.py [--rounds 200] [--packets 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thingdoer.models import ObjectMeta, Pod  # noqa: E402
from thingdoer.models.pod import PodSpec  # noqa: E402
from thingdoer.net import netlink  # noqa: E402
from thingdoer.net.ipam import Ipam  # noqa: E402
from thingdoer.net.subnets import Lease, parse_config  # noqa: E402
from thingdoer.node.network import Network, NetworkOptions, netns_name  # noqa: E402

CONFIG = '{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}'
HOSTS = {"a": ("192.168.251.1", "10.244.1.0/24"), "b": ("192.168.251.2", "10.244.2.0/24")}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3), "n": len(ordered)}


def node_network(host: str, state: Path) -> Network:
    """A builtin-mode Network as ``start`` leaves it, without etcd: subnet and bridge given."""
    public_ip, subnet = HOSTS[host]
    net = Network(None, NetworkOptions(mode="builtin", bridge="cni0", resolv_conf=Path("/etc/resolv.conf")),
                  state, f"bench-{host}")
    net.config = parse_config(CONFIG)
    net.subnet = IPv4Network(subnet)
    net.gateway = net.subnet.network_address + 1
    net.public_ip, net.underlay, net.mtu = IPv4Address(public_ip), "eth0", 1500
    net._setup_host()
    net.ipam = Ipam(state / "net" / "ips", net.subnet, net.gateway)
    return net


def pod(name: str) -> Pod:
    return Pod(metadata=ObjectMeta(name=name, namespace="default", uid=str(uuid.uuid4())),
               spec=PodSpec(containers=[{"name": "main", "image": "busybox"}]))


# -- inside a host netns -----------------------------------------------------------------------


def inside_wire(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        net = node_network("a", Path(tmp))
        wire, unwire, cli = [], [], []
        for i in range(rounds):
            p = pod(f"p{i}")
            t0 = time.perf_counter()
            net.wire(p)
            t1 = time.perf_counter()
            net.unwire(p.metadata.uid)
            t2 = time.perf_counter()
            wire.append((t1 - t0) * 1e3)
            unwire.append((t2 - t1) * 1e3)
        for i in range(rounds):
            ns, veth = f"tdbench-cli-{i}", f"vethcli{i}"
            t0 = time.perf_counter()
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", "cni0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", "10.244.1.200/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", "10.244.1.1")
            cli.append((time.perf_counter() - t0) * 1e3)
            sh("ip", "link", "del", veth)
            sh("ip", "netns", "del", ns)
    return {"wire_ms": percentiles(wire), "unwire_ms": percentiles(unwire), "ip_cli_wire_ms": percentiles(cli)}


def inside_pod(host: str, state: str) -> None:
    """Wire one pod on ``host``, route to the other host's subnet, print the pod's netns name."""
    net = node_network(host, Path(state))
    other = "b" if host == "a" else "a"
    net.leases = {"other": Lease(IPv4Network(HOSTS[other][1]), IPv4Address(HOSTS[other][0]), "host-gw")}
    net.sync_routes()
    p = pod(f"pod-{host}")
    wiring = net.wire(p)
    print(json.dumps({"netns": netns_name(p.metadata.uid), "ip": str(wiring.ip)}))


def echo_server(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 9999))
        print("ready", flush=True)
        s.settimeout(30)
        while True:
            try:
                data, peer = s.recvfrom(64)
            except TimeoutError:
                return
            if data == b"stop":
                return
            s.sendto(data, peer)


def echo_client(address: str, packets: int) -> None:
    samples, lost = [], 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for i in range(packets + 50):
            payload = f"{i:08d}".encode()
            t0 = time.perf_counter()
            s.sendto(payload, (address, 9999))
            try:
                while s.recvfrom(64)[0] != payload:  # a late answer to a lost round
                    pass
            except TimeoutError:
                lost += 1
                continue
            if i >= 50:  # warm-up: ARP, route cache
                samples.append((time.perf_counter() - t0) * 1e6)
        s.sendto(b"stop", (address, 9999))
    print(json.dumps({**percentiles(samples), "lost": lost}))


# -- the driver (root netns: makes the topology, runs the rest inside it) ----------------------


def in_netns(ns: str, *argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, __file__, *argv],
                            stdout=subprocess.PIPE, text=True, **kw)


def round_trip(server_ns: str, client_ns: str, address: str, packets: int) -> dict:
    server = in_netns(server_ns, "--echo-server", address)
    assert server.stdout.readline().strip() == "ready"
    client = in_netns(client_ns, "--echo-client", address, "--packets", str(packets))
    out, _ = client.communicate(timeout=120)
    server.wait(30)
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--inside-wire", action="store_true")
    parser.add_argument("--inside-pod")
    parser.add_argument("--state")
    parser.add_argument("--echo-server")
    parser.add_argument("--echo-client")
    args = parser.parse_args()
    if args.inside_wire:
        print(json.dumps(inside_wire(args.rounds)))
        return
    if args.inside_pod:
        inside_pod(args.inside_pod, args.state)
        return
    if args.echo_server:
        echo_server(args.echo_server)
        return
    if args.echo_client:
        echo_client(args.echo_client, args.packets)
        return

    tag = uuid.uuid4().hex[:6]
    made: list[str] = []
    pods: list[str] = []
    try:
        sw = f"tdb{tag}-sw"
        sh("ip", "netns", "add", sw)
        made.append(sw)
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for host, (ip, _) in HOSTS.items():
            ns = f"tdb{tag}-{host}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", sw, "link", "add", f"p-{host}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", sw, "link", "set", f"p-{host}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        result = {"bench": "net_pods"}
        wire = in_netns(f"tdb{tag}-a", "--inside-wire", "--rounds", str(args.rounds))
        result.update(json.loads(wire.communicate(timeout=600)[0]))
        result["wire_vs_ip_cli_p50"] = round(result["wire_ms"]["p50"] / result["ip_cli_wire_ms"]["p50"], 3)
        states = {h: tempfile.mkdtemp(prefix="tdbench-") for h in HOSTS}
        wired = {}
        for host in HOSTS:
            proc = in_netns(f"tdb{tag}-{host}", "--inside-pod", host, "--state", states[host])
            wired[host] = json.loads(proc.communicate(timeout=60)[0])
            pods.append(wired[host]["netns"])
        result["pod_to_pod_rtt_us"] = round_trip(wired["b"]["netns"], wired["a"]["netns"], wired["b"]["ip"],
                                                 args.packets)
        result["host_to_host_rtt_us"] = round_trip(f"tdb{tag}-b", f"tdb{tag}-a", HOSTS["b"][0], args.packets)
        result["pod_vs_host_rtt_p50"] = round(result["pod_to_pod_rtt_us"]["p50"] /
                                              result["host_to_host_rtt_us"]["p50"], 3)
        print(json.dumps(result, indent=1))
    finally:
        for ns in pods:
            netlink.remove_netns(ns)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for path in Path(tempfile.gettempdir()).glob("tdbench-*"):
            subprocess.run(["rm", "-rf", str(path)], check=False)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
