"""A local, always-current copy of one resource type, fed by ``Registry.follow``.

Daemons read their caches instead of etcd, and wake on ``changed`` instead of polling.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, TypeVar

from ..models import Node, Pod
from .registry import Registry

M = TypeVar("M", Pod, Node)


class Informer(Generic[M]):
    def __init__(self, registry: Registry[M], key_of: Callable[[M], str], prefix: str | None = None):
        self.registry = registry
        self._key_of = key_of
        self._prefix = prefix
        self.objects: dict[str, M] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        # key → latest version of each object changed (or deleted: its last version) since
        # the consumer last drained them, so a consumer handles what changed, not everything.
        self._dirty: dict[str, M] = {}

    async def run(self) -> None:
        async for kind, payload, revision in self.registry.follow(self._prefix):
            if kind == "LIST":
                fresh = {self._key_of(o): o for o in payload}
                self._dirty.update((k, o) for k, o in self.objects.items() if k not in fresh)
                self._dirty.update(fresh)
                self.objects = fresh
                self.synced.set()
            elif kind == "DELETE":
                self.objects.pop(self._key_of(payload), None)
                self._dirty[self._key_of(payload)] = payload
            else:
                self.objects[self._key_of(payload)] = payload
                self._dirty[self._key_of(payload)] = payload
            self.revision = revision
            self.changed.set()

    def values(self) -> list[M]:
        return list(self.objects.values())

    def drain(self) -> list[M]:
        """The objects changed or deleted since the last drain (latest version of each)."""
        changed, self._dirty = list(self._dirty.values()), {}
        return changed


def pod_key(pod: Pod) -> str:
    return "/".join(pod.key)


def node_key(node: Node) -> str:
    return node.metadata.name
