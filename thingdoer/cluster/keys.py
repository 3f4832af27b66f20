"""Every etcd key thingdoer reads or writes is built here (layout: docs/architecture.md).

    <prefix>/pods/<namespace>/<name>   Pod JSON; resourceVersion = the key's mod_revision
    <prefix>/nodes/<name>              Node JSON (outlives the node, so NotReady can be shown)
    <prefix>/alive/<name>              node liveness: bound to the node's lease, gone when it expires

Names are validated DNS labels/subdomains before they get here, so they cannot contain ``/``.
Flannel's keys (``FlannelKeys``) have a prefix of their own, shared with flanneld hosts.
"""

from __future__ import annotations

DEFAULT_PREFIX = "/thingdoer"


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix.rstrip("/")

    def pods(self, namespace: str | None = None) -> str:
        """The prefix of all pods, or of one namespace's pods (trailing ``/`` included)."""
        return f"{self.prefix}/pods/" + (f"{namespace}/" if namespace else "")

    def pod(self, namespace: str, name: str) -> str:
        return f"{self.prefix}/pods/{namespace}/{name}"

    def nodes(self) -> str:
        return f"{self.prefix}/nodes/"

    def node(self, name: str) -> str:
        return f"{self.prefix}/nodes/{name}"

    def alive_all(self) -> str:
        return f"{self.prefix}/alive/"

    def alive(self, node: str) -> str:
        return f"{self.prefix}/alive/{node}"

    @staticmethod
    def last_part(key: str) -> str:
        return key.rsplit("/", 1)[-1]


FLANNEL_PREFIX = "/coreos.com/network"


class FlannelKeys:
    """flannel's own keys, byte for byte (flanneld's ``--etcd-prefix``, default
    ``/coreos.com/network``), shared with any flanneld host of the same network:

        <prefix>/config                      the network config JSON
        <prefix>/subnets/<a.b.c.d>-<len>     one node's subnet lease, bound to an etcd lease
    """

    def __init__(self, prefix: str = FLANNEL_PREFIX):
        self.prefix = prefix.rstrip("/")

    def config(self) -> str:
        return f"{self.prefix}/config"

    def subnets(self) -> str:
        return f"{self.prefix}/subnets/"

    def subnet(self, name: str) -> str:
        """``name`` is ``subnets.subnet_key(...)``, e.g. ``10.244.1.0-24``."""
        return f"{self.prefix}/subnets/{name}"
