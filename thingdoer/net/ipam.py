"""Pod addresses of one node, kept on disk so an agent restart never hands out a live IP twice.

Layout (as CNI's host-local IPAM): ``<dir>/<ip>`` holds the uid of the pod that has the address,
created with ``O_EXCL`` (a file's existence is the reservation); ``<dir>/last_reserved_ip``
remembers where the round-robin search stopped. The choice itself is ``subnets.pick_address``.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from .subnets import pick_address

LAST = "last_reserved_ip"


class Ipam:
    def __init__(self, directory: Path, subnet: IPv4Network, gateway: IPv4Address):
        self.dir, self.subnet, self.gateway = directory, subnet, gateway
        directory.mkdir(parents=True, exist_ok=True)

    def owners(self) -> dict[str, IPv4Address]:
        """uid → address, for every reservation on disk (in any subnet)."""
        found = {}
        for entry in self.dir.iterdir():
            if entry.name == LAST or entry.name.startswith("."):
                continue
            try:
                found[entry.read_text().strip()] = IPv4Address(entry.name)
            except (OSError, ValueError):
                continue
        return found

    def address_of(self, uid: str) -> IPv4Address | None:
        return self.owners().get(uid)

    def allocate(self, uid: str) -> IPv4Address:
        """The pod's address: the one it has, or a new reservation."""
        owners = self.owners()
        if uid in owners and owners[uid] in self.subnet:
            return owners[uid]
        used = set(owners.values())
        after = None
        try:
            after = IPv4Address((self.dir / LAST).read_text().strip())
        except (OSError, ValueError):
            pass
        while True:
            ip = pick_address(self.subnet, self.gateway, used, after)
            try:
                fd = os.open(self.dir / str(ip), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # raced another allocation: try the next one
                used.add(ip)
                continue
            # No fsync: the record must outlive the agent, not the host (a reboot ends every pod).
            with os.fdopen(fd, "w") as file:
                file.write(uid)
            (self.dir / LAST).write_text(str(ip))
            return ip

    def release(self, uid: str) -> None:
        for owner, ip in self.owners().items():
            if owner == uid:
                (self.dir / str(ip)).unlink(missing_ok=True)
