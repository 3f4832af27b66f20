"""Pod networking across hosts, for real: three "hosts" are network namespaces on a test bridge,
each running its own workerd (``nsenter --net``), pods are runc containers in busybox.

Topology (all made by the test, all removed at teardown, even on failure):

    netns <id>-sw:  bridge br0 ──┬── <id>-h1 eth0 192.168.250.1   workerd node-1
                                 ├── <id>-h2 eth0 192.168.250.2   workerd node-2
                                 ├── <id>-h3 eth0 192.168.250.3   workerd node-3
                                 ├── <id>-fl eth0 192.168.250.4   "flanneld host" played by the test
                                 ├── <id>-out eth0 192.168.250.200  a server outside the cluster
                                 └── root netns: veth <id>r 192.168.250.254 (etcd listens here)

etcd runs in the root namespace on that veth address (the control plane and the test reach
it there, the hosts over the bridge); apid, schedulerd run in the root namespace on loopback.
No traffic leaves these namespaces except on that one veth pair.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from thingdoer.cluster.etcd_server import EtcdServer
from thingdoer.cluster.keys import FlannelKeys
from thingdoer.cluster.store import Store
from thingdoer.net.subnets import parse_lease, parse_subnet_env

from .conftest import Cluster, free_port_pair, needs_etcd, needs_root, needs_runc, pod_manifest, wait_until

pytestmark = [pytest.mark.runc, pytest.mark.etcd, needs_root, needs_runc, needs_etcd]

HOSTS = {"h1": "192.168.250.1", "h2": "192.168.250.2", "h3": "192.168.250.3"}
FLANNEL_HOST, OUTSIDE, ROOT_SIDE = "192.168.250.4", "192.168.250.200", "192.168.250.254"
NETWORK = "10.244.0.0/16"
FOREIGN_SUBNET = "10.244.200.0/24"  # the subnet the test's "flanneld host" leases


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class Topology:
    def __init__(self):
        self.id = f"tdn{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self.root_veth = f"{self.id}r"
        self.server: subprocess.Popen | None = None

    def ns(self, name: str) -> str:
        return f"{self.id}-{name}"

    def up(self) -> None:
        sw = self._netns("sw")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for name, ip in [*HOSTS.items(), ("fl", FLANNEL_HOST), ("out", OUTSIDE)]:
            ns = self._netns(name)
            sh("ip", "-n", sw, "link", "add", f"p-{name}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", sw, "link", "set", f"p-{name}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # The one link into the root namespace: a veth pair of our own.
        sh("ip", "link", "add", self.root_veth, "type", "veth", "peer", "name", "p-root", "netns", sw)
        sh("ip", "-n", sw, "link", "set", "p-root", "master", "br0", "up")
        sh("ip", "addr", "add", f"{ROOT_SIDE}/24", "dev", self.root_veth)
        sh("ip", "link", "set", self.root_veth, "up")

    def _netns(self, name: str) -> str:
        ns = self.ns(name)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        return ns

    def exec(self, name: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns(name), *argv, check=check)

    def serve_outside(self, port: int) -> None:
        """A server outside the cluster that answers with the address it sees the client at."""
        code = ("import http.server as h\n"
                "class H(h.BaseHTTPRequestHandler):\n"
                "  def do_GET(s):\n"
                "    b=('seen '+s.client_address[0]+'\\n').encode(); s.send_response(200)\n"
                "    s.send_header('Content-Length',str(len(b))); s.end_headers(); s.wfile.write(b)\n"
                f"h.HTTPServer(('{OUTSIDE}',{port}),H).serve_forever()\n")
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns("out"), sys.executable, "-c", code],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def down(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(10)
        sh("ip", "link", "del", self.root_veth, check=False)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


def pod_namespaces(state: Path) -> list[str]:
    """The pod netns names a worker made, from its address records."""
    ips = state / "net" / "ips"
    if not ips.is_dir():
        return []
    return [f"thingdoer-{p.read_text().strip()}" for p in ips.iterdir() if p.name != "last_reserved_ip"]


@pytest.fixture
def net(tmp_path, image_layout):
    topo = Topology()
    etcd = cluster = None
    made: set[str] = set()
    try:
        topo.up()
        port = free_port_pair()
        etcd = EtcdServer(tmp_path / "etcd", client_port=port, peer_port=port + 1, host=ROOT_SIDE)
        etcd.start()
        cluster = Cluster(tmp_path, etcd, f"/thingdoer-test-{uuid.uuid4().hex[:10]}", image_layout)
        cluster.topo = topo
        cluster.start_control_plane()
        yield cluster
    finally:
        try:
            if cluster is not None:
                for state in cluster.workers.values():
                    made.update(pod_namespaces(state))
                cluster.stop()
        finally:
            for name in made:  # pod netns live in the shared /var/run/netns: remove ours by name
                sh("ip", "netns", "del", name, check=False)
            try:
                if etcd is not None:
                    etcd.stop()
            finally:
                topo.down()


def put_config(cluster, backend: str) -> None:
    async def put():
        async with Store(cluster.etcd.endpoint) as store:
            await store.put(FlannelKeys().config(),
                            json.dumps({"Network": NETWORK, "Backend": {"Type": backend}}).encode())
    asyncio.run(put())


def start_hosts(cluster, hosts=HOSTS) -> None:
    for name, ip in hosts.items():
        cluster.add_worker(f"node-{name[1:]}", netns=cluster.topo.ns(name), wait=False, extra_args=[
            "--address", ip, "--public-ip", ip, "--network-mode", "builtin",
            "--subnet-env", str(cluster.tmp / f"{name}-subnet.env"), "--network-repair-interval", "1"],
            network=[])
    for name in hosts:
        wait_until(lambda: cluster._node_ready(f"node-{name[1:]}"), what=f"node-{name[1:]} Ready")


def run_pod(cluster, name: str, node: str, command: list[str], until: str | None = None):
    """Start a pod on ``node``; with ``until``, wait for that text in its output. Pods stay
    running (``sleep`` at the end), so the test reads their output, not their exit."""
    cluster.apply(pod_manifest(name, command, node_selector={"kubernetes.io/hostname": node}, grace=0))
    pod = cluster.client.wait_pod("default", name, lambda p: p.status.phase != "Pending", 60)
    assert pod.status.phase == "Running", f"{name}: {pod.status.phase}: {logs(cluster, name)}"
    if until:
        try:
            wait_until(lambda: until in logs(cluster, name), what=f"{until!r} from {name}")
        except AssertionError as err:
            raise AssertionError(f"{err}; its output: {logs(cluster, name)!r}") from None
    return pod


def http_get(ip: str, path: str) -> str:
    """A shell command for an HTTP GET (busybox nc: the static busybox's wget crashes here)."""
    return f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080"


def script(text: str) -> list[str]:
    return ["sh", "-c", text + "; sleep 3600"]


def logs(cluster, name: str) -> str:
    return b"".join(cluster.client.logs("default", name)).decode()


def leases(cluster) -> dict[str, bytes]:
    async def read():
        async with Store(cluster.etcd.endpoint) as store:
            return {kv.key: kv.value for kv in (await store.list(FlannelKeys().subnets())).items}
    return asyncio.run(read())


def check_pod_to_pod(cluster) -> None:
    server = run_pod(cluster, "server", "node-2", ["sh", "-c", "mkdir /www && echo hello-from-node-2 > /www/index.html "
                                                               "&& httpd -f -vv -p 8080 -h /www"])
    server_ip = wait_until(lambda: cluster.client.get_pod("default", "server").status.podIP, what="podIP")
    assert server_ip.startswith("10.244."), server.status
    client = run_pod(cluster, "client", "node-1", script(
        f"ping -c 2 -W 2 {server_ip}; {http_get(server_ip, '/index.html')}; "
        "cat /etc/hosts; echo client-done"), until="client-done")
    client = cluster.client.get_pod("default", "client")
    out = logs(cluster, "client")
    assert "2 packets received" in out and "hello-from-node-2" in out, out
    assert f"{client.status.podIP}\tclient" in out  # the pod's own /etc/hosts
    # Inside the cluster network nothing is masqueraded: the server saw the client's pod IP.
    wait_until(lambda: client.status.podIP in logs(cluster, "server"), what="the server's access log")


def check_teardown(cluster, pods: list[str], hosts=HOSTS) -> None:
    states = {name: state for name, state in cluster.workers.items()}
    namespaces = [n for s in states.values() for n in pod_namespaces(s)]
    assert namespaces
    for pod in pods:
        cluster.client.delete_pod("default", pod)
    wait_until(lambda: not {p.metadata.name for p in cluster.client.list_pods("default")[0]} & set(pods),
               what="the pods to be gone")
    existing = sh("ip", "netns", "list")
    assert not [n for n in namespaces if n in existing]
    for host in hosts:
        links = cluster.topo.exec(host, "ip", "-o", "link")
        assert "veth" not in links, links
        tables = cluster.topo.exec(host, "nft", "list", "tables")
        if "thingdoer" in tables:  # one masquerade rule for the network, nothing per pod
            rules = cluster.topo.exec(host, "nft", "list", "table", "ip", "thingdoer")
            assert not any(f"10.244.{i}." in rules for i in range(1, 255)), rules
    assert all(not pod_namespaces(s) for s in states.values())


def test_host_gw_pods_reach_each_other_outside_and_a_flannel_host(net):
    """host-gw: pod to pod across hosts by pod IP, masquerade to a server outside the cluster,
    a lease written as flanneld writes it is routed to, and deleting pods leaves nothing."""
    cluster, topo = net, net.topo
    put_config(cluster, "host-gw")
    start_hosts(cluster)

    # Each node leased a subnet in flannel's format, and wrote flannel's subnet.env.
    written = leases(cluster)
    assert len(written) == 3
    for key, value in written.items():
        lease = parse_lease(key.rsplit("/", 1)[-1], value)
        assert value == json.dumps({"PublicIP": str(lease.public_ip), "BackendType": "host-gw"},
                                   separators=(",", ":")).encode()
    env = parse_subnet_env((cluster.tmp / "h1-subnet.env").read_text())
    assert str(env.network) == NETWORK and env.ipmasq

    check_pod_to_pod(cluster)

    # Masquerade: the outside server sees the node's address, not the pod's.
    topo.serve_outside(8080)
    run_pod(cluster, "egress", "node-1", script(f"for i in 1 2 3 4 5 6 7 8 9 10; do {http_get(OUTSIDE, '/')} "
                                                f"| grep seen && break; sleep 0.3; done"),
            until="seen ")
    assert f"seen {HOSTS['h1']}" in logs(cluster, "egress")

    # Interop: the test plays a flanneld host: lease in flannel's exact bytes, its own route back.
    async def flannel_lease():
        async with Store(cluster.etcd.endpoint) as store:
            lease = await store.grant_lease(60)
            await store.create(FlannelKeys().subnet("10.244.200.0-24"),
                               f'{{"PublicIP":"{FLANNEL_HOST}","BackendType":"host-gw"}}'.encode(), lease=lease)
            return lease
    lease_id = asyncio.run(flannel_lease())
    topo.exec("fl", "ip", "addr", "add", "10.244.200.1/24", "dev", "lo")
    node1_subnet = next(parse_lease(k.rsplit("/", 1)[-1], v).subnet for k, v in written.items()
                        if parse_lease(k.rsplit("/", 1)[-1], v).public_ip.compressed == HOSTS["h1"])
    topo.exec("fl", "ip", "route", "add", str(node1_subnet), "via", HOSTS["h1"])
    wait_until(lambda: FOREIGN_SUBNET in topo.exec("h1", "ip", "route"), what="a route to the flannel host")
    run_pod(cluster, "to-flannel", "node-1", script("ping -c 1 -W 2 10.244.200.1; echo pinged"), until="pinged")
    assert "1 packets received" in logs(cluster, "to-flannel")

    # A route deleted by hand is repaired; a lease that goes takes its route along.
    topo.exec("h1", "ip", "route", "del", FOREIGN_SUBNET)
    wait_until(lambda: FOREIGN_SUBNET in topo.exec("h1", "ip", "route"), what="the route repaired")

    async def revoke():
        async with Store(cluster.etcd.endpoint) as store:
            await store.revoke_lease(lease_id)
    asyncio.run(revoke())
    wait_until(lambda: FOREIGN_SUBNET not in topo.exec("h1", "ip", "route"), what="the route removed")

    check_teardown(cluster, ["server", "client", "egress", "to-flannel"])


def test_vxlan_pods_reach_each_other_like_flannel(net):
    """vxlan: flannel.1 with VNI 1 on UDP 8472, VtepMAC in the lease, ARP and FDB per peer."""
    cluster, topo = net, net.topo
    put_config(cluster, "vxlan")
    start_hosts(cluster)

    for key, value in leases(cluster).items():
        lease = parse_lease(key.rsplit("/", 1)[-1], value)
        assert lease.backend == "vxlan" and lease.vni == 1
        device = topo.exec(f"h{str(lease.public_ip).rsplit('.', 1)[1]}", "ip", "-d", "link", "show", "flannel.1")
        assert "vxlan id 1 " in device and "dstport 8472" in device and lease.vtep_mac in device
        assert lease.vtep_mac in topo.exec("h1", "ip", "neigh", "show", "dev", "flannel.1") or \
            str(lease.public_ip) == HOSTS["h1"]
    fdb = topo.exec("h1", "bridge", "fdb", "show", "dev", "flannel.1")
    assert f"dst {HOSTS['h2']}" in fdb and f"dst {HOSTS['h3']}" in fdb

    check_pod_to_pod(cluster)
    check_teardown(cluster, ["server", "client"])



def refused_start(cluster, topo) -> str:
    """Start a builtin-mode workerd on h1 that must refuse to run; its log, which must hold
    one line of error, not a stack."""
    cluster.add_worker("node-1", netns=topo.ns("h1"), wait=False, network=[], extra_args=[
        "--address", HOSTS["h1"], "--public-ip", HOSTS["h1"], "--network-mode", "builtin",
        "--subnet-env", str(cluster.tmp / "h1-subnet.env")])
    proc = cluster.procs["workerd-node-1"]
    proc.wait(30)
    assert proc.returncode != 0
    log = cluster.log("workerd-node-1")
    assert "Traceback" not in log
    return log


def test_subnet_exhaustion_is_reported_not_looped_on(net):
    """A /28 holds three /30 node subnets: a fourth node's workerd exits with a clear error."""
    cluster, topo = net, net.topo

    async def put():
        async with Store(cluster.etcd.endpoint) as store:
            await store.put(FlannelKeys().config(), b'{"Network":"10.9.0.0/28","Backend":{"Type":"host-gw"}}')
            for i, subnet in enumerate(["10.9.0.4-30", "10.9.0.8-30", "10.9.0.12-30"]):
                await store.put(FlannelKeys().subnet(subnet),
                                f'{{"PublicIP":"192.168.250.{100 + i}","BackendType":"host-gw"}}'.encode())
    asyncio.run(put())
    assert "no free subnet: all 3 /30 subnets of 10.9.0.0/28" in refused_start(cluster, topo)


def test_a_network_overlapping_the_hosts_own_is_refused(net):
    cluster, topo = net, net.topo

    async def put():
        async with Store(cluster.etcd.endpoint) as store:
            await store.put(FlannelKeys().config(), b'{"Network":"192.168.0.0/16","Backend":{"Type":"host-gw"}}')
    asyncio.run(put())
    assert "192.168.0.0/16 overlaps 192.168.250.0/24" in refused_start(cluster, topo)
    assert leases(cluster) == {}


def test_flannel_mode_wires_pods_on_flanneld_subnet(net):
    """A flanneld owns lease and routes: workerd reads its subnet.env and only wires pods."""
    cluster, topo = net, net.topo
    env = cluster.tmp / "h1-subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.77.1/24\nFLANNEL_MTU=1400\n"
                   "FLANNEL_IPMASQ=true\n")
    cluster.add_worker("node-1", netns=topo.ns("h1"), network=[], extra_args=[
        "--address", HOSTS["h1"], "--network-mode", "flannel", "--subnet-env", str(env)])
    run_pod(cluster, "p", "node-1", script("cat /sys/class/net/eth0/mtu; ip -4 addr show eth0; ip route; echo shown"),
            until="shown")
    pod = cluster.client.get_pod("default", "p")
    assert pod.status.podIP.startswith("10.244.77.")
    out = logs(cluster, "p")
    assert "mtu 1400" in out and "default via 10.244.77.1" in out
    assert "10.244.77.1/24" in topo.exec("h1", "ip", "-4", "addr", "show", "cni0")
    assert leases(cluster) == {}  # flanneld's job, not ours
    assert "thingdoer" not in topo.exec("h1", "nft", "list", "tables")
    check_teardown(cluster, ["p"], hosts=["h1"])


def test_a_restarted_agent_keeps_its_lease_and_addresses_and_cleans_leftovers(net):
    cluster = net
    put_config(cluster, "host-gw")
    one = {"h1": HOSTS["h1"]}
    start_hosts(cluster, one)
    before = leases(cluster)
    run_pod(cluster, "a", "node-1", script("echo up"), until="up")
    ip_a = cluster.client.get_pod("default", "a").status.podIP
    state = cluster.workers["node-1"]

    cluster.kill("workerd-node-1")  # SIGKILL: no clean-up of any kind
    ghost = "00000000-0000-4000-8000-000000000001"  # a pod that crashed half-way, known to no one
    (state / "net" / "ips" / "10.244.1.250").write_text(ghost)
    sh("ip", "netns", "add", f"thingdoer-{ghost}")
    try:
        start_hosts(cluster, one)
        wait_until(lambda: cluster.log("workerd-node-1").count("workerd node-1 running") == 2,
                   what="the restarted workerd")
        assert leases(cluster).keys() == before.keys()  # the same subnet, taken back
        run_pod(cluster, "b", "node-1", script("echo up"), until="up")
        ip_b = cluster.client.get_pod("default", "b").status.podIP
        assert ip_b != ip_a and cluster.client.get_pod("default", "a").status.podIP == ip_a
        wait_until(lambda: f"thingdoer-{ghost}" not in sh("ip", "netns", "list"), what="the leftover netns removed")
        assert not (state / "net" / "ips" / "10.244.1.250").exists()
    finally:
        sh("ip", "netns", "del", f"thingdoer-{ghost}", check=False)
    check_teardown(cluster, ["a", "b"], hosts=["h1"])


def test_a_node_out_of_pod_addresses_says_so_in_the_pod_status(net):
    """A /30 node subnet holds one pod: the second one is not started and its status says why."""
    cluster = net

    async def put():
        async with Store(cluster.etcd.endpoint) as store:
            await store.put(FlannelKeys().config(), b'{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}')
    asyncio.run(put())
    start_hosts(cluster, {"h1": HOSTS["h1"]})
    run_pod(cluster, "first", "node-1", script("echo up"), until="up")
    assert cluster.client.get_pod("default", "first").status.podIP == "10.9.0.6"
    cluster.apply(pod_manifest("second", ["true"], node_selector={"kubernetes.io/hostname": "node-1"}))

    def waiting():
        statuses = cluster.client.get_pod("default", "second").status.containerStatuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.message
    message = wait_until(lambda: "no free pod address" in (waiting() or "") and waiting(), what="the reason")
    assert "no free pod address in 10.9.0.4/30" in message
    assert cluster.client.get_pod("default", "second").status.phase == "Pending"
    check_teardown(cluster, ["first", "second"], hosts=["h1"])
