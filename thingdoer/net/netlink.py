"""The only module that talks netlink (through pyroute2): namespaces, links, addresses, routes,
neighbours, and the IPv4 forwarding switch.

Every call is synchronous (run it in a thread from async code) and idempotent where the caller
needs it to be: creating what exists or removing what is gone is not an error. Any other
netlink failure becomes ``Unavailable`` naming the operation and the object, with pyroute2's
error as its cause; nothing here swallows one.

Kernel quirks this module knows about:
- a veth created with its peer in another namespace comes up there down and unnamed as we
  like: the peer is renamed and configured from inside the namespace;
- deleting one end of a veth deletes the other; removing a named netns only unmounts it, the
  kernel frees it (and what is in it) once nothing holds it, so links are deleted first;
- pyroute2's own netns helpers fork a child, and a fork in a process with gRPC threads dies
  (SIGSEGV): namespaces are made and entered here with unshare/setns on the calling thread
  (network namespaces are per thread), which is always switched back before returning;
- routes we program carry our own protocol number (``ROUTE_PROTO``), which is how we tell them
  from anyone else's when repairing.
"""

from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import Unavailable

NETNS_DIR = Path("/var/run/netns")
ROUTE_PROTO = 0x5D  # "thingdoer": marks the routes this module programs (rtnetlink protocol id)
LOOPBACK = 1  # lo is always index 1 in a network namespace
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


def _fail(what: str, err: Exception) -> Unavailable:
    return Unavailable(f"netlink: {what}: {err}")


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextmanager
def _inside(namespace: str):
    """Run the block with this thread in netns ``namespace`` (sockets made there stay there)."""
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(namespace), os.O_RDONLY)
        try:
            _check(_libc.setns(target, CLONE_NEWNET), f"setns {namespace}")
            try:
                yield
            finally:
                _check(_libc.setns(saved, CLONE_NEWNET), "setns back")
        finally:
            os.close(target)
    finally:
        os.close(saved)


@contextmanager
def _rtnl(namespace: str | None = None):
    try:
        if namespace:
            with _inside(namespace):
                ipr = IPRoute()
        else:
            ipr = IPRoute()
    except (NetlinkError, OSError) as err:
        raise _fail(f"opening rtnetlink{' in netns ' + namespace if namespace else ''}", err) from err
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr, name: str) -> int | None:
    """The index of link ``name`` (one RTM_GETLINK, not a dump), None when there is none."""
    try:
        return ipr.link("get", ifname=name)[0]["index"]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise


# -- namespaces -----------------------------------------------------------------------------


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_netns(name: str) -> None:
    """A named netns as ``ip netns add`` makes it: a bind mount of the namespace on
    ``/var/run/netns/<name>``."""
    if netns_exists(name):
        return
    path = NETNS_DIR / name
    try:
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            try:
                _check(_libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None),
                       f"bind mount on {path}")
            finally:
                _check(_libc.setns(saved, CLONE_NEWNET), "setns back")
        finally:
            os.close(saved)
    except OSError as err:
        _unlink_netns(path)
        raise _fail(f"creating netns {name}", err) from err


def _unlink_netns(path: Path) -> None:
    _libc.umount2(str(path).encode(), MNT_DETACH)  # EINVAL when not mounted: fine
    path.unlink(missing_ok=True)


def remove_netns(name: str) -> None:
    path = NETNS_DIR / name
    if not path.exists():
        return
    try:
        _unlink_netns(path)
    except OSError as err:
        raise _fail(f"removing netns {name}", err) from err


def enable_forwarding() -> None:
    """net.ipv4.ip_forward=1 in this network namespace (a node routes for its pods)."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except OSError as err:
        raise _fail(f"enabling IPv4 forwarding ({path})", err) from err


# -- links and addresses --------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    ifname: str
    interface: IPv4Interface
    mtu: int


def addresses() -> list[Address]:
    """Every IPv4 address of this namespace, with its link's name and MTU."""
    with _rtnl() as ipr:
        links = {link["index"]: (link.get("ifname"), link.get("mtu")) for link in ipr.get_links()}
        found = []
        for addr in ipr.get_addr(family=2):
            name, mtu = links.get(addr["index"], ("?", 1500))
            found.append(Address(name, IPv4Interface(f"{addr.get('address')}/{addr['prefixlen']}"), mtu))
        return found


def default_route_address() -> IPv4Address | None:
    """The source address of this namespace's default route's interface, if any."""
    with _rtnl() as ipr:
        for route in ipr.get_default_routes(family=2):
            oif = route.get("oif")
            for addr in ipr.get_addr(family=2, index=oif):
                return IPv4Address(addr.get("address"))
    return None


def ensure_bridge(name: str, address: IPv4Interface, mtu: int) -> None:
    """A bridge ``name`` that is up with ``address`` (other IPv4 addresses on it are removed)."""
    with _rtnl() as ipr:
        try:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="bridge")
                index = _index(ipr, name)
            ipr.link("set", index=index, state="up", mtu=mtu)
            have = {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(family=2, index=index)}
            for other in have - {str(address)}:
                ip, _, plen = other.partition("/")
                ipr.addr("del", index=index, address=ip, prefixlen=int(plen))
            if str(address) not in have:
                ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except NetlinkError as err:
            raise _fail(f"setting up bridge {name} with {address}", err) from err


def delete_link(name: str, namespace: str | None = None) -> None:
    """Delete link ``name`` (a veth takes its peer along); a missing link is fine."""
    with _rtnl(namespace) as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise _fail(f"deleting link {name}", err) from err


def link_exists(name: str) -> bool:
    with _rtnl() as ipr:
        return _index(ipr, name) is not None


def wire_pod(namespace: str, host_veth: str, bridge: str, address: IPv4Interface,
             gateway: IPv4Address, mtu: int) -> None:
    """In netns ``namespace``: ``lo`` up, ``eth0`` (a veth whose peer ``host_veth`` is on
    ``bridge``) up with ``address`` and ``mtu``, default route via ``gateway``."""
    with _rtnl() as ipr:
        try:
            bridge_index = _index(ipr, bridge)
            if bridge_index is None:
                raise Unavailable(f"netlink: bridge {bridge} does not exist (the node's network is not set up)")
            target = os.open(netns_path(namespace), os.O_RDONLY)
            try:
                veth = dict(ifname=host_veth, kind="veth", mtu=mtu, master=bridge_index,
                            peer={"ifname": "eth0", "mtu": mtu, "net_ns_fd": target})
                try:
                    ipr.link("add", **veth)
                except NetlinkError as err:
                    if err.code != errno.EEXIST:  # a veth left from a half-made, removed netns
                        raise
                    ipr.link("del", ifname=host_veth)
                    ipr.link("add", **veth)
            finally:
                os.close(target)
            ipr.link("set", ifname=host_veth, state="up")
        except NetlinkError as err:
            raise _fail(f"creating veth {host_veth} on {bridge} for netns {namespace}", err) from err
    if_inside_namespace(namespace, lambda ipr: _configure_pod_side(ipr, address, gateway))


def _configure_pod_side(ipr, address: IPv4Interface, gateway: IPv4Address) -> None:
    ipr.link("set", index=LOOPBACK, state="up")
    eth0 = _index(ipr, "eth0")
    ipr.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)
    ipr.link("set", index=eth0, state="up")
    ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=eth0)


def if_inside_namespace(namespace: str, body) -> None:
    with _rtnl(namespace) as ipr:
        try:
            body(ipr)
        except NetlinkError as err:
            raise _fail(f"configuring netns {namespace}", err) from err


# -- routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address
    ifname: str
    onlink: bool = False


def our_routes() -> dict[IPv4Network, Route]:
    """The routes in the main table that this module programmed (``ROUTE_PROTO``)."""
    with _rtnl() as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        found = {}
        for route in ipr.get_routes(family=2, table=254, proto=ROUTE_PROTO):
            if route["proto"] != ROUTE_PROTO or not route.get("gateway"):
                continue
            dst = IPv4Network(f"{route.get('dst')}/{route['dst_len']}")
            found[dst] = Route(dst, IPv4Address(route.get("gateway")), names.get(route.get("oif"), "?"),
                               bool(route["flags"] & 4))
        return found


def replace_route(route: Route) -> None:
    with _rtnl() as ipr:
        try:
            index = _index(ipr, route.ifname)
            if index is None:
                raise Unavailable(f"netlink: route to {route.dst}: no interface {route.ifname}")
            ipr.route("replace", dst=str(route.dst), gateway=str(route.gateway), oif=index,
                      proto=ROUTE_PROTO, flags=4 if route.onlink else 0)
        except NetlinkError as err:
            raise _fail(f"route {route.dst} via {route.gateway} dev {route.ifname}", err) from err


def delete_route(dst: IPv4Network) -> None:
    with _rtnl() as ipr:
        try:
            ipr.route("del", dst=str(dst), proto=ROUTE_PROTO)
        except NetlinkError as err:
            if err.code != errno.ESRCH:
                raise _fail(f"deleting route {dst}", err) from err


# -- vxlan ----------------------------------------------------------------------------------


def ensure_vxlan(name: str, vni: int, local: IPv4Address, port: int, underlay: str, mtu: int,
                 mac: str, address: IPv4Interface) -> None:
    """flanneld's VTEP: ``name`` (flannel.<VNI>), no learning, ``mac`` pinned, ``address`` on it."""
    with _rtnl() as ipr:
        try:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=str(local),
                         vxlan_port=port, vxlan_learning=0, vxlan_link=_index(ipr, underlay),
                         address=mac, mtu=mtu)
                index = _index(ipr, name)
            ipr.link("set", index=index, state="up")
            have = {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(family=2, index=index)}
            if str(address) not in have:
                ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except NetlinkError as err:
            raise _fail(f"setting up vxlan {name} (VNI {vni}, local {local})", err) from err


def vxlan_peer(device: str, vtep_ip: IPv4Address, mac: str, public_ip: IPv4Address) -> None:
    """The ARP entry (peer VTEP address → its MAC) and the FDB entry (MAC → its host)."""
    with _rtnl() as ipr:
        try:
            index = _index(ipr, device)
            ipr.neigh("replace", dst=str(vtep_ip), lladdr=mac, ifindex=index, state=NUD_PERMANENT)
            ipr.fdb("replace", ifindex=index, lladdr=mac, dst=str(public_ip), state=NUD_PERMANENT,
                    flags=NTF_SELF)
        except NetlinkError as err:
            raise _fail(f"vxlan peer {vtep_ip} ({mac}) at {public_ip} on {device}", err) from err


def vxlan_forget(device: str, vtep_ip: IPv4Address, mac: str | None) -> None:
    with _rtnl() as ipr:
        index = _index(ipr, device)
        if index is None:
            return
        for call in (lambda: ipr.neigh("del", dst=str(vtep_ip), ifindex=index),
                     lambda: mac and ipr.fdb("del", ifindex=index, lladdr=mac, flags=NTF_SELF)):
            try:
                call()
            except NetlinkError as err:
                if err.code not in (errno.ENOENT, errno.ESRCH):
                    raise _fail(f"removing vxlan peer {vtep_ip} from {device}", err) from err


def vxlan_peers(device: str) -> dict[IPv4Address, str]:
    """The permanent ARP entries on ``device``: peer VTEP address → MAC."""
    with _rtnl() as ipr:
        index = _index(ipr, device)
        if index is None:
            return {}
        return {IPv4Address(n.get("dst")): n.get("lladdr") for n in ipr.get_neighbours(ifindex=index, family=2)
                if n.get("dst") and n["state"] & NUD_PERMANENT}
