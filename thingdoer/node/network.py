"""The node's pod network: its flannel subnet lease, its bridge and routes, and each pod's netns.

Modes (``--network-mode``):

- ``builtin``: this agent is the node's flanneld. It reads the network config at
  ``<flannel prefix>/config``, leases a subnet at ``<flannel prefix>/subnets/<a.b.c.d>-<len>``
  (create-if-absent on an etcd lease of 24 h, renewed; on restart it takes back the lease whose
  PublicIP is its own), writes ``subnet.env``, masquerades traffic leaving the cluster network
  (``net/nft.py``) and keeps one route per other node's lease — ``host-gw``: via the node's
  PublicIP; ``vxlan``: over ``flannel.<VNI>`` with an ARP and an FDB entry per peer, as flanneld.
  Routes follow the lease watch and are repaired every ``repair_interval`` seconds.
- ``flannel``: a real flanneld owns the lease and routes; the agent reads its ``subnet.env`` and
  only wires pods (bridge address = FLANNEL_SUBNET).
- ``none``: no pod network: each container gets a network namespace of its own, loopback only.

Per pod (``wire``/``unwire``, synchronous, idempotent): netns ``thingdoer-<uid>``, a veth
``veth<hash>`` on the bridge with ``eth0`` inside, an address reserved on disk (``net/ipam.py``)
*before* anything is made (so a crash leaves a record the resync finds), the bridge address as
default gateway, ``lo`` up, the MTU of the network; ``hosts`` and ``resolv.conf`` files that the
containers get as read-only bind mounts. Teardown runs in reverse and releases the address last.

On disk, under ``<state dir>/net/``: ``ips/<ip>`` (the pod uid holding it) and
``pods/<uid>/{hosts,resolv.conf}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from ..cluster.keys import FLANNEL_PREFIX, FlannelKeys, Keys
from ..cluster.store import Event, Listing, Store
from ..errors import AlreadyExists, Cause, Invalid, NotFound, ThingdoerError, Unavailable
from ..models import Pod
from ..net import netlink, nft
from ..net.ipam import Ipam
from ..net.subnets import (DEFAULT_NETWORK, HOST_GW, VXLAN, VXLAN_OVERHEAD, Lease, NetworkConfig,
                           SubnetEnv, check_no_overlap, format_config, format_lease,
                           format_subnet_env, hosts_file, parse_config, parse_lease,
                           parse_subnet_env, pick_subnet, route_plan, subnet_key, vxlan_mac)

log = logging.getLogger(__name__)

BUILTIN, FLANNEL, NONE = "builtin", "flannel", "none"
MODES = (BUILTIN, FLANNEL, NONE)
NETNS_PREFIX = "thingdoer-"


@dataclass(frozen=True)
class NetworkOptions:
    mode: str = NONE
    bridge: str = "cni0"
    public_ip: str | None = None  # default: the address of the default route's interface
    subnet_env: Path = Path("/run/flannel/subnet.env")
    flannel_prefix: str = FLANNEL_PREFIX
    lease_ttl: int = 24 * 3600  # flannel's
    renew_interval: float = 3600.0
    repair_interval: float = 10.0  # flannel's route check period
    resolv_conf: Path = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class PodWiring:
    """What the containers of a wired pod need: the netns to join, the files to bind-mount."""

    ip: IPv4Address | None
    netns: str | None  # path to join; None: the runtime makes a private one per container
    mounts: list[dict] = field(default_factory=list)


def netns_name(uid: str) -> str:
    return NETNS_PREFIX + uid


def host_veth(uid: str) -> str:
    """The host end of the pod's veth: ``veth`` + 11 hex digits (IFNAMSIZ is 16 with the NUL)."""
    return "veth" + hashlib.sha1(uid.encode()).hexdigest()[:11]


def vxlan_device(vni: int) -> str:
    return f"flannel.{vni}"


async def ensure_default_config(store: Store, prefix: str = FLANNEL_PREFIX) -> bool:
    """Write the default network config (10.244.0.0/16, /24 per node, host-gw) unless one
    exists; True when it wrote it."""
    try:
        await store.create(FlannelKeys(prefix).config(), format_config(DEFAULT_NETWORK))
        return True
    except AlreadyExists:
        return False


async def read_config(store: Store, prefix: str = FLANNEL_PREFIX) -> NetworkConfig:
    key = FlannelKeys(prefix).config()
    kv = await store.get(key)
    if kv is None:
        raise NotFound(f"no network config at {key}: `thingdoer up` writes a default one, or put "
                       f"flannel's JSON there, e.g. {format_config(DEFAULT_NETWORK).decode()}")
    return parse_config(kv.value, where=key)


class Network:
    def __init__(self, store: Store, options: NetworkOptions, state_dir: Path, node: str):
        if options.mode not in MODES:
            raise Invalid(Cause("--network-mode", f"{options.mode!r}: use one of {', '.join(MODES)}"))
        self.store, self.options, self.node = store, options, node
        self.keys = FlannelKeys(options.flannel_prefix)
        self.dir = state_dir / "net"
        self.config: NetworkConfig | None = None
        self.subnet: IPv4Network | None = None
        self.gateway: IPv4Address | None = None
        self.mtu = 1500
        self.public_ip: IPv4Address | None = None
        self.underlay = ""
        self.vtep_mac: str | None = None
        self.ipam: Ipam | None = None
        self.leases: dict[str, Lease] = {}
        self._lease_key = ""
        self._etcd_lease = 0
        self._wired: dict[str, PodWiring] = {}

    @property
    def enabled(self) -> bool:
        return self.options.mode != NONE

    # -- the node -----------------------------------------------------------------------

    async def start(self) -> None:
        """Make the node's network ready for pods (lease, bridge, masquerade, subnet.env)."""
        if self.options.mode == BUILTIN:
            await self._start_builtin()
        elif self.options.mode == FLANNEL:
            await asyncio.to_thread(self._start_flannel)
        if self.enabled:
            self.ipam = Ipam(self.dir / "ips", self.subnet, self.gateway)
            log.info("pod network %s: subnet %s on %s (mtu %d)", self.options.mode, self.subnet,
                     self.options.bridge, self.mtu)

    async def run(self) -> None:
        """builtin: renew the lease, follow the other leases, repair routes periodically."""
        if self.options.mode != BUILTIN:
            return
        await asyncio.gather(self._renew(), self._follow_leases(), self._repair())

    def _start_flannel(self) -> None:
        path = self.options.subnet_env
        try:
            env = parse_subnet_env(path.read_text(), where=str(path))
        except FileNotFoundError as err:
            raise Unavailable(f"{path} does not exist: start flanneld first (network mode flannel), "
                              "or use --network-mode builtin") from err
        self.config = None
        self.subnet, self.gateway, self.mtu = env.subnet, env.gateway, env.mtu
        netlink.enable_forwarding()
        netlink.ensure_bridge(self.options.bridge, IPv4Interface(f"{env.gateway}/{env.subnet.prefixlen}"),
                              env.mtu)

    async def _start_builtin(self) -> None:
        config = await read_config(self.store, self.options.flannel_prefix)
        addresses = await asyncio.to_thread(netlink.addresses)
        ours = {self.options.bridge, vxlan_device(config.vni)}
        self.public_ip = IPv4Address(self.options.public_ip) if self.options.public_ip else \
            await asyncio.to_thread(netlink.default_route_address)
        if self.public_ip is None:
            raise Invalid(Cause("--public-ip", "this host has no default route: name the address "
                                               "other nodes reach it at"))
        underlay = next((a for a in addresses if a.interface.ip == self.public_ip), None)
        if underlay is None:
            raise Invalid(Cause("--public-ip", f"{self.public_ip} is not an address of this host"))
        check_no_overlap(config, [a.interface.network for a in addresses
                                  if a.ifname not in ours and a.ifname != "lo"])
        self.config, self.underlay = config, underlay.ifname
        self.mtu = underlay.mtu - (VXLAN_OVERHEAD if config.backend == VXLAN else 0)
        if config.backend == VXLAN:
            self.vtep_mac = vxlan_mac(f"{self.node}/{self.public_ip}".encode())
        self.subnet = await self._acquire()
        self.gateway = self.subnet.network_address + 1
        await asyncio.to_thread(self._setup_host)
        self._write_subnet_env()

    def _own_lease(self, subnet: IPv4Network) -> Lease:
        return Lease(subnet, self.public_ip, self.config.backend, self.vtep_mac,
                     self.config.vni if self.config.backend == VXLAN else None)

    async def _acquire(self) -> IPv4Network:
        """Take back this node's lease (same PublicIP) or create one on a free subnet."""
        config = self.config
        listing = await self.store.list(self.keys.subnets())
        leases = {}
        for kv in listing.items:
            try:
                leases[kv.key] = (kv, parse_lease(Keys.last_part(kv.key), kv.value))
            except Invalid as err:
                log.warning("ignoring %s", err)
        for key, (kv, lease) in leases.items():
            if lease.public_ip == self.public_ip and lease.subnet.subnet_of(config.network) \
                    and lease.subnet.prefixlen == config.subnet_len:
                etcd_lease = kv.lease
                try:
                    if not etcd_lease:
                        raise NotFound("no lease")
                    await self.store.keep_alive(etcd_lease)
                except NotFound:
                    etcd_lease = await self.store.grant_lease(self.options.lease_ttl)
                value = format_lease(self._own_lease(lease.subnet))
                if value != kv.value or etcd_lease != kv.lease:
                    await self.store.put(key, value, lease=etcd_lease)
                self._lease_key, self._etcd_lease = key, etcd_lease
                log.info("took back subnet lease %s", key)
                return lease.subnet
        taken = {lease.subnet for _, lease in leases.values()}
        while True:
            subnet = pick_subnet(config, taken)  # Invalid once none is left: reported, not looped on
            key = self.keys.subnet(subnet_key(subnet))
            etcd_lease = await self.store.grant_lease(self.options.lease_ttl)
            try:
                await self.store.create(key, format_lease(self._own_lease(subnet)), lease=etcd_lease)
            except AlreadyExists:
                await self.store.revoke_lease(etcd_lease)
                taken.add(subnet)
                continue
            self._lease_key, self._etcd_lease = key, etcd_lease
            log.info("leased subnet %s", key)
            return subnet

    def _setup_host(self) -> None:
        config = self.config
        netlink.enable_forwarding()
        netlink.ensure_bridge(self.options.bridge, IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}"),
                              self.mtu)
        if config.backend == VXLAN:
            netlink.ensure_vxlan(vxlan_device(config.vni), config.vni, self.public_ip, config.port,
                                 self.underlay, self.mtu, self.vtep_mac,
                                 IPv4Interface(f"{self.subnet.network_address}/32"))
        nft.apply(config.network)

    def _write_subnet_env(self) -> None:
        path = self.options.subnet_env
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(format_subnet_env(SubnetEnv(self.config.network, self.subnet, self.gateway,
                                                   self.mtu, True)))
        os.replace(tmp, path)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.options.renew_interval)
            try:
                await self.store.keep_alive(self._etcd_lease)
            except NotFound:
                log.warning("subnet lease %s expired; leasing again", self._lease_key)
                subnet = await self._acquire()
                if subnet != self.subnet:
                    log.error("subnet lease lost: got %s instead of %s; pods keep their addresses "
                              "until they are recreated", subnet, self.subnet)
            except ThingdoerError as err:  # etcd away, or no subnet left: try again next time
                log.warning("cannot renew subnet lease %s: %s", self._lease_key, err)

    async def _follow_leases(self) -> None:
        async for item in self.store.follow(self.keys.subnets()):
            if isinstance(item, Listing):
                self.leases = {}
                for kv in item.items:
                    self._remember(kv.key, kv.value)
            elif isinstance(item, Event):
                if item.kind == "DELETE":
                    self.leases.pop(item.key, None)
                else:
                    self._remember(item.key, item.value)
            try:
                await asyncio.to_thread(self.sync_routes)
            except ThingdoerError as err:  # the periodic repair tries again
                log.warning("programming routes: %s", err)

    def _remember(self, key: str, value: bytes) -> None:
        try:
            self.leases[key] = parse_lease(Keys.last_part(key), value)
        except Invalid as err:
            log.warning("not routing to %s", err)

    async def _repair(self) -> None:
        while True:
            await asyncio.sleep(self.options.repair_interval)
            try:
                await asyncio.to_thread(self._setup_host)
                await asyncio.to_thread(self.sync_routes)
            except ThingdoerError as err:
                log.warning("repairing the node network: %s", err)

    def sync_routes(self) -> None:
        """Make this node's routes (and vxlan neighbours) match the other nodes' leases."""
        config = self.config
        plan = route_plan(self.subnet, list(self.leases.values()), config.backend)
        device = vxlan_device(config.vni)
        if config.backend == HOST_GW:
            want = {dst: netlink.Route(dst, lease.public_ip, self.underlay) for dst, lease in plan.items()}
        else:
            want = {dst: netlink.Route(dst, dst.network_address, device, onlink=True)
                    for dst, lease in plan.items()}
            peers = netlink.vxlan_peers(device)
            for vtep, mac in peers.items():
                if not any(vtep == dst.network_address and lease.vtep_mac == mac
                           for dst, lease in plan.items()):
                    netlink.vxlan_forget(device, vtep, mac)
            for dst, lease in plan.items():
                if peers.get(dst.network_address) != lease.vtep_mac:
                    self._try(netlink.vxlan_peer, device, dst.network_address, lease.vtep_mac,
                              lease.public_ip)
        have = netlink.our_routes()
        for dst in have.keys() - want.keys():
            self._try(netlink.delete_route, dst)
        for dst, route in want.items():
            if have.get(dst) != route:
                self._try(netlink.replace_route, route)

    @staticmethod
    def _try(call, *args) -> None:
        """One route or neighbour: a failure is logged, the others still get programmed."""
        try:
            call(*args)
        except Unavailable as err:
            log.warning("%s", err)

    # -- the pods -----------------------------------------------------------------------

    def wire(self, pod: Pod) -> PodWiring:
        """The pod's network, made if it is not there yet (synchronous; idempotent)."""
        uid = pod.metadata.uid
        if not self.enabled:
            return PodWiring(None, None)
        if uid in self._wired:
            return self._wired[uid]
        ip = self.ipam.allocate(uid)  # first: a crash from here on leaves a record to clean up
        name, veth = netns_name(uid), host_veth(uid)
        files = self.dir / "pods" / uid
        files.mkdir(parents=True, exist_ok=True)
        made = netlink.netns_exists(name)
        if not (made and netlink.link_exists(veth)):
            if made:  # half made before a crash: start over (the veth goes with its netns)
                netlink.remove_netns(name)
            netlink.create_netns(name)
            netlink.wire_pod(name, veth, self.options.bridge,
                             IPv4Interface(f"{ip}/{self.subnet.prefixlen}"), self.gateway, self.mtu)
        hostname = pod.spec.hostname or pod.metadata.name
        (files / "hosts").write_text(hosts_file(ip, hostname))
        try:
            shutil.copyfile(self.options.resolv_conf, files / "resolv.conf")
        except OSError:
            (files / "resolv.conf").write_text("")
        mounts = [{"destination": f"/etc/{n}", "type": "bind", "source": str(files / n),
                   "options": ["rbind", "ro"]} for n in ("hosts", "resolv.conf")]
        wiring = PodWiring(ip, netlink.netns_path(name), mounts)
        self._wired[uid] = wiring
        return wiring

    def address_of(self, uid: str) -> IPv4Address | None:
        wiring = self._wired.get(uid)
        return wiring.ip if wiring else None

    def unwire(self, uid: str) -> None:
        """Remove the pod's veth, netns, files and address (synchronous; idempotent)."""
        self._wired.pop(uid, None)
        if not self.enabled and not (self.dir / "pods" / uid).exists():
            return
        netlink.delete_link(host_veth(uid))
        netlink.remove_netns(netns_name(uid))
        shutil.rmtree(self.dir / "pods" / uid, ignore_errors=True)
        if self.ipam is not None:
            self.ipam.release(uid)
        else:
            for entry in (self.dir / "ips").glob("*"):
                if entry.is_file() and entry.read_text().strip() == uid:
                    entry.unlink(missing_ok=True)

    def known_pods(self) -> set[str]:
        """uids this node holds network state for (addresses, files)."""
        uids = set(self.ipam.owners()) if self.ipam is not None else set()
        pods = self.dir / "pods"
        if pods.is_dir():
            uids |= {p.name for p in pods.iterdir()}
        return uids
