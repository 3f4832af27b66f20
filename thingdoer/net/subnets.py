"""Pure: flannel's network config, subnet leases and ``subnet.env``, byte for byte; subnet maths.

No I/O here. Everything a flanneld host writes parses, and everything thingdoer writes is what
flanneld would write for the same facts:

- the network config (``<prefix>/config``): ``{"Network", "SubnetLen", "SubnetMin",
  "SubnetMax", "Backend": {"Type", ...}}``, checked and defaulted with flannel's rules
  (``pkg/subnet/config.go``): a network smaller than /28 is refused, SubnetLen defaults to 24
  (or network+2 for a network smaller than /22), at least four subnets must fit, the first
  subnet is skipped, SubnetMin/SubnetMax must lie in the network on a SubnetLen boundary;
- a lease (``<prefix>/subnets/<a.b.c.d>-<len>``): Go's ``json.Marshal`` of ``LeaseAttrs``
  (``{"PublicIP":...,"BackendType":...,"BackendData":...}``, empty fields omitted, no spaces);
- ``/run/flannel/subnet.env``: ``FLANNEL_NETWORK``, ``FLANNEL_SUBNET`` (the bridge address with
  the subnet length), ``FLANNEL_MTU``, ``FLANNEL_IPMASQ``.

Subnets are picked lowest-first among the free ones (flanneld picks at random; both are valid
for the other, as the key create is the arbiter). Exhaustion is an error, never a retry loop.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from ..errors import Cause, Invalid

HOST_GW, VXLAN = "host-gw", "vxlan"
BACKENDS = (HOST_GW, VXLAN)
VXLAN_VNI, VXLAN_PORT = 1, 8472  # flannel's defaults (flannel.<VNI> is the device name)
VXLAN_OVERHEAD = 50  # outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_NETWORK = {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": HOST_GW}}
_SUBNET_KEY = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: str
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def capacity(self) -> int:
        """How many node subnets fit between SubnetMin and SubnetMax."""
        size = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // size + 1

    def candidates(self):
        """Every leasable subnet, lowest first."""
        size = 1 << (32 - self.subnet_len)
        for start in range(int(self.subnet_min), int(self.subnet_max) + 1, size):
            yield IPv4Network((start, self.subnet_len))


def parse_config(text: bytes | str, where: str = "network config") -> NetworkConfig:
    """flannel's network config JSON → ``NetworkConfig``, with flannel's defaults and checks.

    Every refusal is an ``Invalid`` naming the field, the value and what would be accepted."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise Invalid(Cause(where, f"is not JSON ({err}); write e.g. "
                                   f"{json.dumps(DEFAULT_NETWORK)}")) from err
    if not isinstance(raw, dict):
        raise Invalid(Cause(where, "must be a JSON object with Network, SubnetLen and Backend"))
    try:
        network = IPv4Network(raw.get("Network", ""), strict=True)
    except (ValueError, TypeError) as err:
        raise Invalid(Cause(f"{where}: Network", f"{raw.get('Network')!r} is not an IPv4 network "
                                                 f"such as 10.244.0.0/16 ({err})")) from err
    if network.prefixlen > 28:
        raise Invalid(Cause(f"{where}: Network", f"{network} is too small: the minimum useful "
                                                 "network prefix is /28"))
    subnet_len = raw.get("SubnetLen") or 0
    if not isinstance(subnet_len, int) or subnet_len < 0:
        raise Invalid(Cause(f"{where}: SubnetLen", f"{subnet_len!r} must be a prefix length, e.g. 24"))
    if subnet_len:
        if subnet_len > 30:
            raise Invalid(Cause(f"{where}: SubnetLen", f"/{subnet_len} must be /30 or larger "
                                                       "(room for a bridge and a pod)"))
        if subnet_len < network.prefixlen + 2:
            raise Invalid(Cause(f"{where}: SubnetLen", f"/{subnet_len} in {network}: the network "
                                f"must hold at least four subnets (SubnetLen ≥ {network.prefixlen + 2})"))
    else:
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    size = 1 << (32 - subnet_len)
    subnet_min = _address(raw, "SubnetMin", where, IPv4Address(int(network.network_address) + size))
    subnet_max = _address(raw, "SubnetMax", where,
                          IPv4Address(int(network.broadcast_address) + 1 - size))
    for name, value in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if value not in network:
            raise Invalid(Cause(f"{where}: {name}", f"{value} is not in the Network {network}"))
        if int(value) % size:
            raise Invalid(Cause(f"{where}: {name}", f"{value} is not on a /{subnet_len} boundary"))
    if subnet_min > subnet_max:
        raise Invalid(Cause(f"{where}: SubnetMin", f"{subnet_min} is above SubnetMax {subnet_max}"))
    backend = raw.get("Backend") or {"Type": "udp"}
    if not isinstance(backend, dict) or backend.get("Type") not in BACKENDS:
        kind = backend.get("Type") if isinstance(backend, dict) else backend
        raise Invalid(Cause(f"{where}: Backend.Type", f"{kind!r} is not supported; use one of "
                                                      f"{', '.join(BACKENDS)}"))
    vni, port = backend.get("VNI", VXLAN_VNI), backend.get("Port", VXLAN_PORT) or VXLAN_PORT
    if backend["Type"] == VXLAN and (not isinstance(vni, int) or not 0 < vni < 1 << 24):
        raise Invalid(Cause(f"{where}: Backend.VNI", f"{vni!r} must be an integer in 1..16777215"))
    return NetworkConfig(network, subnet_len, subnet_min, subnet_max, backend["Type"], vni, port, raw)


def _address(raw: dict, name: str, where: str, default: IPv4Address) -> IPv4Address:
    value = raw.get(name)
    if not value:
        return default
    try:
        return IPv4Address(value)
    except (ValueError, TypeError) as err:
        raise Invalid(Cause(f"{where}: {name}", f"{value!r} is not an IPv4 address")) from err


def check_no_overlap(config: NetworkConfig, host_networks: list[IPv4Network]) -> None:
    """Refuse a cluster network that overlaps a network this host is already on (its uplink,
    a docker bridge ...): pod routes would shadow it."""
    for net in host_networks:
        if net.overlaps(config.network):
            raise Invalid(Cause("network config: Network",
                                f"{config.network} overlaps {net}, a network this host is on; "
                                "choose a Network that does not"))


def format_config(raw: dict) -> bytes:
    return json.dumps(raw).encode()


# -- leases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    public_ip: IPv4Address
    backend: str
    vtep_mac: str | None = None  # vxlan only
    vni: int | None = None

    @property
    def gateway(self) -> IPv4Address:
        """The bridge address on the node: the subnet's first host address."""
        return self.subnet.network_address + 1


def subnet_key(subnet: IPv4Network) -> str:
    """The last part of a lease key: ``10.244.1.0-24`` (flannel's ``MakeSubnetKey``)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(name: str) -> IPv4Network:
    match = _SUBNET_KEY.match(name)
    if not match:
        raise Invalid(Cause("subnet lease key", f"{name!r} is not <a.b.c.d>-<prefix length>"))
    try:
        return IPv4Network(f"{match.group(1)}/{match.group(2)}", strict=True)
    except ValueError as err:
        raise Invalid(Cause("subnet lease key", f"{name!r}: {err}")) from err


def format_lease(lease: Lease) -> bytes:
    """Go's ``json.Marshal(LeaseAttrs{...})``: field order and omitted empty fields as flannel."""
    attrs: dict = {"PublicIP": str(lease.public_ip), "BackendType": lease.backend}
    if lease.backend == VXLAN:
        attrs["BackendData"] = {"VNI": lease.vni or VXLAN_VNI, "VtepMAC": lease.vtep_mac}
    return json.dumps(attrs, separators=(",", ":")).encode()


def parse_lease(key_name: str, value: bytes | str) -> Lease:
    """A lease as flanneld or thingdoer wrote it; ``Invalid`` when it cannot be routed to."""
    subnet = parse_subnet_key(key_name)
    try:
        attrs = json.loads(value)
        public_ip = IPv4Address(attrs["PublicIP"])
    except (ValueError, KeyError, TypeError) as err:
        raise Invalid(Cause(f"subnet lease {key_name}", f"not a flannel lease with a PublicIP: {err}")) from err
    backend = attrs.get("BackendType") or ""
    data = attrs.get("BackendData") or {}
    mac, vni = None, None
    if backend == VXLAN:
        mac = str(data.get("VtepMAC", "")).lower() if isinstance(data, dict) else ""
        if not _MAC.match(mac):
            raise Invalid(Cause(f"subnet lease {key_name}: BackendData.VtepMAC",
                                f"{mac!r} is not a MAC address"))
        vni = data.get("VNI") or VXLAN_VNI
    return Lease(subnet, public_ip, backend, mac, vni)


def pick_subnet(config: NetworkConfig, taken: set[IPv4Network]) -> IPv4Network:
    """The lowest free subnet; ``Invalid`` when every one is leased (reported, not retried)."""
    for subnet in config.candidates():
        if subnet not in taken:
            return subnet
    raise Invalid(Cause("network config: Network",
                        f"no free subnet: all {config.capacity} /{config.subnet_len} subnets of "
                        f"{config.network} between {config.subnet_min} and {config.subnet_max} "
                        "are leased; widen the Network or delete stale leases"))


# -- subnet.env -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network
    subnet: IPv4Network  # the node's subnet
    gateway: IPv4Address  # FLANNEL_SUBNET's address: the bridge's
    mtu: int
    ipmasq: bool


def format_subnet_env(env: SubnetEnv) -> str:
    return (f"FLANNEL_NETWORK={env.network}\nFLANNEL_SUBNET={env.gateway}/{env.subnet.prefixlen}\n"
            f"FLANNEL_MTU={env.mtu}\nFLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}\n")


def parse_subnet_env(text: str, where: str = "subnet.env") -> SubnetEnv:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name] = value
    try:
        iface = ipaddress.IPv4Interface(values["FLANNEL_SUBNET"])
        return SubnetEnv(IPv4Network(values["FLANNEL_NETWORK"]), iface.network, iface.ip,
                         int(values["FLANNEL_MTU"]), values.get("FLANNEL_IPMASQ", "false") == "true")
    except (KeyError, ValueError) as err:
        raise Invalid(Cause(where, f"needs FLANNEL_NETWORK, FLANNEL_SUBNET and FLANNEL_MTU as "
                                   f"flanneld writes them: {err!r}")) from err


# -- pod addresses --------------------------------------------------------------------------


def pick_address(subnet: IPv4Network, gateway: IPv4Address, used: set[IPv4Address],
                 after: IPv4Address | None = None) -> IPv4Address:
    """A free pod address in ``subnet``: not the network, broadcast or gateway address, not in
    ``used``; the search starts after ``after`` (round-robin, as host-local IPAM, so a freed
    address is not handed out again at once)."""
    hosts = [ip for ip in subnet.hosts() if ip != gateway]
    start = 0
    if after is not None and after in subnet:
        start = next((i + 1 for i, ip in enumerate(hosts) if ip == after), 0)
    for ip in hosts[start:] + hosts[:start]:
        if ip not in used:
            return ip
    raise Invalid(Cause("pod network", f"no free pod address in {subnet}: all {len(hosts)} are "
                                       "in use on this node"))


def hosts_file(ip: IPv4Address | None, hostname: str) -> str:
    text = "# written by thingdoer\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    return text + (f"{ip}\t{hostname}\n" if ip else "")


def route_plan(own: IPv4Network | None, leases: list[Lease], backend: str
               ) -> dict[IPv4Network, Lease]:
    """subnet → the lease to route it by: every other node's lease of the same backend."""
    return {lease.subnet: lease for lease in leases
            if lease.subnet != own and lease.backend == backend}


def vxlan_mac(seed: bytes) -> str:
    """A stable, locally administered unicast MAC for a VTEP (flanneld also pins its MAC)."""
    digest = hashlib.sha256(seed).digest()
    return ":".join(f"{b:02x}" for b in (bytes([(digest[0] & 0xFE) | 0x02]) + digest[1:6]))
