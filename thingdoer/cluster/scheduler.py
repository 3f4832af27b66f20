"""schedulerd: binds pending pods to nodes (the decision itself is ``placement.place``).

Level-triggered: every change to a pod or node wakes one pass over all unbound pods, oldest
first. A bind is a compare-and-swap of ``spec.nodeName`` on the pod as it was read, so two
schedulers never bind one pod twice; the loser just sees the new version and moves on. A pod
that fits nowhere gets condition PodScheduled=False, reason ``Unschedulable`` and stays
Pending; the next node or capacity change schedules it.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import Conflict, NotFound, Unavailable
from ..models import Pod, PodCondition, is_terminal, now
from .informer import Informer, node_key, pod_key
from .placement import place
from .registry import Nodes, Pods

log = logging.getLogger(__name__)

UNSCHEDULABLE = "Unschedulable"


def _scheduled_condition(pod: Pod, status: str, reason: str | None, message: str | None) -> None:
    conditions = [c for c in pod.status.conditions or [] if c.type != "PodScheduled"]
    conditions.append(PodCondition(type="PodScheduled", status=status, reason=reason,
                                   message=message, lastTransitionTime=now()))
    pod.status.conditions = conditions


class Scheduler:
    def __init__(self, pods: Pods, nodes: Nodes):
        self.pods = pods
        self.nodes = nodes
        self.pod_cache = Informer(pods, pod_key)
        self.node_cache = Informer(nodes, node_key)

    async def run(self) -> None:
        wake = asyncio.Event()
        tasks = [asyncio.create_task(self.pod_cache.run()), asyncio.create_task(self.node_cache.run()),
                 asyncio.create_task(self._relay(self.pod_cache.changed, wake)),
                 asyncio.create_task(self._relay(self.node_cache.changed, wake))]
        try:
            await self.pod_cache.synced.wait()
            await self.node_cache.synced.wait()
            while True:
                await wake.wait()
                wake.clear()
                await self.schedule_pending()
        finally:
            for task in tasks:
                task.cancel()

    @staticmethod
    async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
        while True:
            await source.wait()
            source.clear()
            target.set()

    def pending(self) -> list[Pod]:
        unbound = [p for p in self.pod_cache.values()
                   if not p.spec.nodeName and not is_terminal(p.status.phase)
                   and not p.metadata.deletionTimestamp]
        return sorted(unbound, key=lambda p: (p.metadata.creationTimestamp or "", p.key))

    async def schedule_pending(self) -> None:
        for cached in self.pending():
            pod = cached.model_copy(deep=True)  # the cache stays as etcd has it if a write fails
            decision = place(pod, self.node_cache.values(), self.pod_cache.values())
            try:
                if decision.node:
                    bound = await self.bind(pod, decision.node)
                    # Account for it before the watch echoes it back, so the next pod sees it.
                    self.pod_cache.objects[pod_key(bound)] = bound
                else:
                    await self.mark_unschedulable(pod, decision.message)
            except (Conflict, NotFound):
                continue  # changed or deleted meanwhile: the watch brings the new version
            except Unavailable as err:
                log.warning("scheduling %s/%s: %s", *pod.key, err)
                await asyncio.sleep(0.5)
                return

    async def bind(self, pod: Pod, node: str) -> Pod:
        pod.spec.nodeName = node
        pod.status.reason = pod.status.message = None
        _scheduled_condition(pod, "True", None, None)
        bound = await self.pods.update(pod)
        log.info("bound %s/%s to %s", *pod.key, node)
        return bound

    async def mark_unschedulable(self, pod: Pod, message: str) -> None:
        if pod.status.reason == UNSCHEDULABLE and pod.status.message == message:
            return
        pod.status.reason, pod.status.message = UNSCHEDULABLE, message
        _scheduled_condition(pod, "False", UNSCHEDULABLE, message)
        updated = await self.pods.update(pod)
        self.pod_cache.objects[pod_key(updated)] = updated
        log.info("%s/%s unschedulable: %s", *pod.key, message)
