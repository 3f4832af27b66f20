"""The only module that runs ``nft``: thingdoer's one nftables table, for masquerade.

``masquerade_rules`` (pure) writes the table; ``apply`` loads it in one ``nft -f`` transaction
that creates the table if needed, flushes it and fills it again, so re-applying is idempotent
and a half-applied table never exists. Traffic from the cluster network to anywhere outside it
is masqueraded (source NAT to the node's address); pod-to-pod traffic inside the cluster
network, and multicast, keep their source address — as flanneld's ipmasq rules.
"""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Network

from ..errors import Unavailable

TABLE = "thingdoer"


def masquerade_rules(network: IPv4Network, table: str = TABLE) -> str:
    return (f"table ip {table} {{}}\n"
            f"flush table ip {table}\n"
            f"table ip {table} {{\n"
            f"  chain postrouting {{\n"
            f"    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {network} ip daddr {network} return\n"
            f"    ip saddr {network} ip daddr 224.0.0.0/4 return\n"
            f"    ip saddr {network} masquerade\n"
            f"  }}\n"
            f"}}\n")


def _nft(args: list[str], stdin: str | None = None) -> str:
    binary = shutil.which("nft")
    if binary is None:
        raise Unavailable("nft is not installed: apt-get install nftables (needed for masquerade)")
    proc = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"nft {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def apply(network: IPv4Network, table: str = TABLE) -> None:
    _nft(["-f", "-"], masquerade_rules(network, table))

