"""reaperd: when a node's liveness key disappears, its node is NotReady and its pods are lost.

The liveness key ``alive/<node>`` is bound to the node's etcd lease, so etcd deletes it when
the node stops renewing: the DELETE event arrives within one lease TTL of the node's death.
The reaper then sets the node's Ready condition to Unknown (kubectl shows NotReady) and every
non-terminal pod bound there to Failed with reason ``NodeLost``; pods already being deleted
there are removed, since no node is left to stop them. A resync every ``resync`` seconds
catches nodes that died while no reaper was running.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import Conflict, NotFound, Unavailable
from ..models import FAILED, Node, NodeCondition, Pod, is_terminal, now
from .keys import Keys
from .registry import Nodes, Pods
from .store import DELETE, Listing, Store

log = logging.getLogger(__name__)

NODE_LOST = "NodeLost"


def mark_not_ready(node: Node) -> bool:
    ready = node.condition("Ready")
    if ready is not None and ready.status == "Unknown":
        return False
    stamp = now()
    others = [c for c in node.status.conditions if c.type != "Ready"]
    node.status.conditions = others + [NodeCondition(
        type="Ready", status="Unknown", reason="NodeStatusUnknown",
        message="the node's lease expired: its agent stopped renewing it",
        lastHeartbeatTime=ready.lastHeartbeatTime if ready else None, lastTransitionTime=stamp)]
    return True


def mark_lost(pod: Pod, node: str) -> bool:
    if is_terminal(pod.status.phase):
        return False
    pod.status.phase = FAILED
    pod.status.reason = NODE_LOST
    pod.status.message = f"node {node} which was running the pod is unresponsive"
    return True


class Reaper:
    def __init__(self, store: Store, keys: Keys, pods: Pods, nodes: Nodes, *, resync: float = 10.0):
        self.store, self.keys, self.pods, self.nodes = store, keys, pods, nodes
        self.resync = resync

    async def run(self) -> None:
        async for item in self.store.follow(self.keys.alive_all()):
            if isinstance(item, Listing):
                alive = {self.keys.last_part(kv.key) for kv in item.items}
                await self._reap_all_except(alive)
            elif item.kind == DELETE:
                await self._reap_quietly(self.keys.last_part(item.key))

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            try:
                listing = await self.store.list(self.keys.alive_all())
                await self._reap_all_except({self.keys.last_part(kv.key) for kv in listing.items})
            except Unavailable as err:
                log.warning("reaper resync: %s", err)

    async def _reap_all_except(self, alive: set[str]) -> None:
        nodes, _ = await self.nodes.list()
        for node in nodes:
            if node.metadata.name not in alive:
                await self._reap_quietly(node.metadata.name)

    async def _reap_quietly(self, name: str) -> None:
        try:
            await self.reap(name)
        except Unavailable as err:
            log.warning("reaping %s: %s (the resync will retry)", name, err)

    async def reap(self, name: str) -> None:
        """Mark node ``name`` NotReady and fail or remove its pods. Idempotent."""
        if await self.store.get(self.keys.alive(name)) is not None:
            return  # it came back (or never left): its pods are its own
        try:
            await self.nodes.mutate(self.keys.node(name), mark_not_ready)
        except NotFound:
            pass
        pods, _ = await self.pods.list()
        for pod in pods:
            if pod.spec.nodeName != name:
                continue
            try:
                if pod.metadata.deletionTimestamp:
                    await self.pods.delete_at(self.keys.pod(*pod.key), pod.metadata.resourceVersion)
                    log.info("removed %s/%s: its node %s is gone", *pod.key, name)
                elif not is_terminal(pod.status.phase):
                    await self.pods.set_status(pod, lambda p: mark_lost(p, name))
                    log.info("%s/%s lost with node %s", *pod.key, name)
            except (NotFound, Conflict):
                continue  # changed meanwhile; the next resync looks again
