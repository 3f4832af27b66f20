"""Pure pod-network pieces: flannel's config, lease and subnet.env formats, subnet and address
choice, on-disk address bookkeeping, the masquerade table text."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from thingdoer.cluster.keys import FlannelKeys
from thingdoer.errors import Invalid
from thingdoer.net import nft
from thingdoer.net.ipam import Ipam
from thingdoer.net.subnets import (HOST_GW, VXLAN, Lease, SubnetEnv, check_no_overlap,
                                   format_lease, format_subnet_env, hosts_file, parse_config,
                                   parse_lease, parse_subnet_env, pick_address, pick_subnet,
                                   route_plan, subnet_key, vxlan_mac)

# Leases as flanneld writes them (its LeaseAttrs marshalled by Go; some versions add
# "PublicIPv6":null, which must parse too).
FLANNEL_HOSTGW_LEASE = b'{"PublicIP":"192.168.1.12","PublicIPv6":null,"BackendType":"host-gw"}'
FLANNEL_VXLAN_LEASE = (b'{"PublicIP":"192.168.1.13","PublicIPv6":null,"BackendType":"vxlan",'
                       b'"BackendData":{"VNI":1,"VtepMAC":"4e:a5:0b:6c:5d:0e"}}')
FLANNEL_SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def test_flannel_keys_are_flannels():
    keys = FlannelKeys()
    assert keys.config() == "/coreos.com/network/config"
    assert keys.subnet(subnet_key(IPv4Network("10.244.7.0/24"))) == "/coreos.com/network/subnets/10.244.7.0-24"
    assert FlannelKeys("/x/net/").subnets() == "/x/net/subnets/"


@pytest.mark.parametrize("raw, want", [
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}},
     ("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", HOST_GW)),
    ({"Network": "10.5.0.0/24", "Backend": {"Type": "vxlan"}},  # smaller than /22: network+2
     ("10.5.0.0/24", 26, "10.5.0.64", "10.5.0.192", VXLAN)),
    ({"Network": "10.244.0.0/16", "SubnetLen": 20, "SubnetMin": "10.244.32.0", "SubnetMax": "10.244.64.0",
      "Backend": {"Type": "vxlan", "VNI": 1}},
     ("10.244.0.0/16", 20, "10.244.32.0", "10.244.64.0", VXLAN)),
])
def test_config_defaults_follow_flannel(raw, want):
    config = parse_config(json.dumps(raw))
    assert (str(config.network), config.subnet_len, str(config.subnet_min), str(config.subnet_max),
            config.backend) == want


@pytest.mark.parametrize("raw, message", [
    ("{not json", "is not JSON"),
    ('["Network"]', "must be a JSON object"),
    ('{"Network": "10.244.0.0/29", "Backend": {"Type": "host-gw"}}', "too small: the minimum useful network prefix is /28"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 17, "Backend": {"Type": "host-gw"}}', "at least four subnets"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 31, "Backend": {"Type": "host-gw"}}', "/30 or larger"),
    ('{"Network": "10.244.1.0/16", "Backend": {"Type": "host-gw"}}', "is not an IPv4 network"),
    ('{"Network": "banana", "Backend": {"Type": "host-gw"}}', "is not an IPv4 network"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0", "Backend": {"Type": "host-gw"}}', "not in the Network"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.0.128", "Backend": {"Type": "host-gw"}}', "not on a /24 boundary"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.8.0", "Backend": {"Type": "host-gw"}}', "above SubnetMax"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}', "'udp' is not supported"),
    ('{"Network": "10.244.0.0/16"}', "'udp' is not supported"),  # flannel's default backend
])
def test_bad_configs_are_refused_naming_the_field(raw, message):
    with pytest.raises(Invalid) as refused:
        parse_config(raw, where="/coreos.com/network/config")
    assert message in str(refused.value)
    assert "/coreos.com/network/config" in str(refused.value)


def test_a_network_overlapping_the_hosts_own_is_refused():
    config = parse_config('{"Network": "192.168.0.0/16", "Backend": {"Type": "host-gw"}}')
    with pytest.raises(Invalid, match="192.168.0.0/16 overlaps 192.168.1.0/24"):
        check_no_overlap(config, [IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.0/24")])
    check_no_overlap(config, [IPv4Network("10.0.0.0/8")])


def test_flannels_leases_parse():
    hostgw = parse_lease("10.244.4.0-24", FLANNEL_HOSTGW_LEASE)
    assert hostgw == Lease(IPv4Network("10.244.4.0/24"), IPv4Address("192.168.1.12"), HOST_GW)
    vxlan = parse_lease("10.244.5.0-24", FLANNEL_VXLAN_LEASE)
    assert (vxlan.vtep_mac, vxlan.vni, vxlan.gateway) == ("4e:a5:0b:6c:5d:0e", 1, IPv4Address("10.244.5.1"))


def test_what_we_write_is_what_go_marshals_for_flannels_lease_attrs():
    lease = Lease(IPv4Network("10.244.4.0/24"), IPv4Address("192.168.1.12"), HOST_GW)
    assert format_lease(lease) == b'{"PublicIP":"192.168.1.12","BackendType":"host-gw"}'
    vx = Lease(IPv4Network("10.244.5.0/24"), IPv4Address("192.168.1.13"), VXLAN, "4e:a5:0b:6c:5d:0e", 1)
    assert format_lease(vx) == (b'{"PublicIP":"192.168.1.13","BackendType":"vxlan",'
                                b'"BackendData":{"VNI":1,"VtepMAC":"4e:a5:0b:6c:5d:0e"}}')
    assert parse_lease("10.244.5.0-24", format_lease(vx)) == vx


@pytest.mark.parametrize("key, value, message", [
    ("10.244.4.0-33", FLANNEL_HOSTGW_LEASE, "10.244.4.0-33"),
    ("10.244.4.1-24", FLANNEL_HOSTGW_LEASE, "host bits set"),
    ("nonsense", FLANNEL_HOSTGW_LEASE, "is not <a.b.c.d>-<prefix length>"),
    ("10.244.4.0-24", b'{"BackendType":"host-gw"}', "PublicIP"),
    ("10.244.4.0-24", b'{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1}}', "VtepMAC"),
])
def test_unusable_leases_are_refused(key, value, message):
    with pytest.raises(Invalid, match=message):
        parse_lease(key, value)


def test_subnet_env_round_trips_flannels_format():
    env = parse_subnet_env(FLANNEL_SUBNET_ENV)
    assert env == SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24"),
                            IPv4Address("10.244.3.1"), 1450, True)
    assert format_subnet_env(env) == FLANNEL_SUBNET_ENV
    with pytest.raises(Invalid, match="FLANNEL_SUBNET"):
        parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n")


def test_subnets_are_picked_lowest_free_first_and_exhaustion_is_an_error():
    config = parse_config('{"Network": "10.9.0.0/28", "Backend": {"Type": "host-gw"}}')  # 4 x /30
    assert config.capacity == 3  # the first subnet is never handed out
    taken = set()
    for expected in ("10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"):
        subnet = pick_subnet(config, taken)
        assert str(subnet) == expected
        taken.add(subnet)
    with pytest.raises(Invalid, match="no free subnet: all 3 /30 subnets of 10.9.0.0/28"):
        pick_subnet(config, taken)


def test_pod_addresses_skip_gateway_and_go_round_robin():
    subnet, gw = IPv4Network("10.244.1.0/29"), IPv4Address("10.244.1.1")
    assert pick_address(subnet, gw, set()) == IPv4Address("10.244.1.2")
    assert pick_address(subnet, gw, set(), after=IPv4Address("10.244.1.3")) == IPv4Address("10.244.1.4")
    assert pick_address(subnet, gw, set(), after=IPv4Address("10.244.1.6")) == IPv4Address("10.244.1.2")
    used = {IPv4Address(f"10.244.1.{i}") for i in range(2, 7)}
    with pytest.raises(Invalid, match="no free pod address in 10.244.1.0/29"):
        pick_address(subnet, gw, used)


def test_ipam_survives_a_restart_and_never_hands_out_a_live_address_twice(tmp_path):
    subnet, gw = IPv4Network("10.244.1.0/24"), IPv4Address("10.244.1.1")
    ipam = Ipam(tmp_path, subnet, gw)
    a = ipam.allocate("pod-a")
    assert ipam.allocate("pod-a") == a  # idempotent
    restarted = Ipam(tmp_path, subnet, gw)
    b = restarted.allocate("pod-b")
    assert b != a and restarted.owners() == {"pod-a": a, "pod-b": b}
    restarted.release("pod-a")
    c = restarted.allocate("pod-c")
    assert c not in (a, b)  # round robin: the freed address is not reused at once
    assert set(restarted.owners()) == {"pod-b", "pod-c"}


def test_route_plan_is_every_other_lease_of_our_backend():
    own = IPv4Network("10.244.1.0/24")
    leases = [Lease(own, IPv4Address("192.168.1.1"), HOST_GW),
              Lease(IPv4Network("10.244.2.0/24"), IPv4Address("192.168.1.2"), HOST_GW),
              Lease(IPv4Network("10.244.3.0/24"), IPv4Address("192.168.1.3"), VXLAN, "02:00:00:00:00:01", 1)]
    assert list(route_plan(own, leases, HOST_GW)) == [IPv4Network("10.244.2.0/24")]


def test_vtep_mac_is_stable_local_unicast():
    mac = vxlan_mac(b"node-a/192.168.1.1")
    assert mac == vxlan_mac(b"node-a/192.168.1.1") != vxlan_mac(b"node-b/192.168.1.2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_hosts_file_names_the_pod():
    assert "10.244.1.5\tweb\n" in hosts_file(IPv4Address("10.244.1.5"), "web")
    assert "127.0.0.1\tlocalhost" in hosts_file(None, "web")


def test_masquerade_leaves_cluster_traffic_alone():
    rules = nft.masquerade_rules(IPv4Network("10.244.0.0/16"))
    lines = [line.strip() for line in rules.splitlines()]
    assert lines.index("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return") < lines.index(
        "ip saddr 10.244.0.0/16 masquerade")
    assert "flush table ip thingdoer" in lines  # re-applying replaces, never appends
