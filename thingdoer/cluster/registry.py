"""Typed access to stored resources: Pods and Nodes in, Pods and Nodes out.

A ``Registry`` pairs a model with its keys. ``metadata.resourceVersion`` is always the etcd
``mod_revision`` the object was read at, so writing an object back is a compare-and-swap
against what its writer saw. ``mutate`` is the read-modify-write loop every daemon uses for
status changes: it re-reads and re-applies the change when someone else wrote in between.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator, Callable, Generic, TypeVar

from ..errors import Conflict, NotFound
from ..models import Node, Pod, can_move, dump_json
from .keys import Keys
from .store import DELETE, PUT, Event, KV, Listing, Store

log = logging.getLogger(__name__)

M = TypeVar("M", Pod, Node)

MAX_CONFLICT_RETRIES = 16


class Registry(Generic[M]):
    def __init__(self, store: Store, model: type[M], key_of: Callable[[M], str], prefix: str):
        self.store = store
        self.model = model
        self._key_of = key_of
        self.prefix = prefix

    def decode(self, kv: KV | Event) -> M:
        obj = self.model.model_validate(json.loads(kv.value))
        obj.metadata.resourceVersion = str(kv.mod_revision if isinstance(kv, KV) else kv.revision)
        return obj

    def _encode(self, obj: M) -> bytes:
        obj.metadata.resourceVersion = None  # derived from etcd, never stored
        return dump_json(obj)

    async def create(self, obj: M) -> M:
        revision = await self.store.create(self._key_of(obj), self._encode(obj))
        obj.metadata.resourceVersion = str(revision)
        return obj

    async def get_at(self, key: str) -> M:
        kv = await self.store.get(key)
        if kv is None:
            raise NotFound(f"{self.model.__name__.lower()} {key.removeprefix(self.prefix)!r} not found")
        return self.decode(kv)

    async def list(self, prefix: str | None = None) -> tuple[list[M], int]:
        listing = await self.store.list(prefix or self.prefix)
        return [self.decode(kv) for kv in listing.items], listing.revision

    async def update(self, obj: M) -> M:
        """Write ``obj`` back if nobody changed it since it was read (``Conflict`` otherwise)."""
        expected = int(obj.metadata.resourceVersion or 0)
        revision = await self.store.update(self._key_of(obj), self._encode(obj), expected)
        obj.metadata.resourceVersion = str(revision)
        return obj

    async def mutate(self, key: str, change: Callable[[M], bool | None], *, current: M | None = None) -> M:
        """Apply ``change`` to the stored object and write it back, retrying on conflicts.

        ``change`` edits the object in place and returns False to skip the write (nothing
        to do). It may run several times; it must be a pure function of the object.
        ``current`` (e.g. from a watch cache) saves the first read; if it is stale, the
        compare-and-swap fails and the loop reads the real one.
        """
        for attempt in range(MAX_CONFLICT_RETRIES):
            obj = current.model_copy(deep=True) if attempt == 0 and current is not None \
                else await self.get_at(key)
            if change(obj) is False:
                return obj
            try:
                return await self.update(obj)
            except Conflict:
                continue
            except NotFound:
                if attempt == 0 and current is not None:
                    continue  # the cached copy was stale: the read says whether it still exists
                raise
        raise Conflict(f"{key}: gave up after {MAX_CONFLICT_RETRIES} conflicting writes")

    async def delete_at(self, key: str, resource_version: str | None = None) -> bool:
        return await self.store.delete(key, int(resource_version) if resource_version else None)

    async def follow(self, prefix: str | None = None) -> AsyncIterator[tuple[str, M | list[M], int]]:
        """("LIST", objects, revision) then ("PUT"|"DELETE", object, revision) for each change."""
        async for item in self.store.follow(prefix or self.prefix):
            if isinstance(item, Listing):
                yield "LIST", [self.decode(kv) for kv in item.items], item.revision
            else:
                try:
                    obj = self.decode(item)
                except ValueError as err:  # a foreign or corrupt value must not stop a daemon
                    log.warning("skipping undecodable %s: %s", item.key, err)
                    continue
                yield item.kind, obj, item.revision


    async def watch(self, prefix: str, revision: int,
                    keep: Callable[[M], bool] = lambda _: True) -> AsyncIterator[tuple[str, M]]:
        """Kubernetes watch events ("ADDED"|"MODIFIED"|"DELETED", object) after ``revision``,
        as seen through the filter ``keep``: an object that starts matching is ADDED, one that
        stops matching is DELETED. Raises ``Gone`` when ``revision`` was compacted."""
        async for event in self.store.watch(prefix, revision + 1):
            try:
                obj = self.decode(event)
                before = self.decode(Event(PUT, event.key, event.previous, event.revision)) \
                    if event.previous is not None else None
            except ValueError as err:
                log.warning("skipping undecodable %s: %s", event.key, err)
                continue
            if event.kind == DELETE:
                if keep(obj):
                    yield "DELETED", obj
                continue
            was, now_ = before is not None and keep(before), keep(obj)
            if now_:
                yield ("MODIFIED" if was else "ADDED"), obj
            elif was:
                yield "DELETED", obj


class Pods(Registry[Pod]):
    def __init__(self, store: Store, keys: Keys):
        super().__init__(store, Pod, lambda p: keys.pod(*p.key), keys.pods())
        self.keys = keys

    async def get(self, namespace: str, name: str) -> Pod:
        try:
            return await self.get_at(self.keys.pod(namespace, name))
        except NotFound:
            raise NotFound(f'pods "{name}" not found') from None

    async def set_status(self, pod: Pod, change: Callable[[Pod], bool | None]) -> Pod:
        """``mutate`` for status writers: refuses to move a pod out of a terminal phase."""

        def guarded(current: Pod) -> bool | None:
            before = current.status.phase
            if change(current) is False:
                return False
            if not can_move(before, current.status.phase):
                log.info("pod %s/%s: ignoring %s -> %s", *current.key, before, current.status.phase)
                return False
            return True

        return await self.mutate(self.keys.pod(*pod.key), guarded, current=pod)


class Nodes(Registry[Node]):
    def __init__(self, store: Store, keys: Keys):
        super().__init__(store, Node, lambda n: keys.node(n.metadata.name), keys.nodes())
        self.keys = keys

    async def get(self, name: str) -> Node:
        try:
            return await self.get_at(self.keys.node(name))
        except NotFound:
            raise NotFound(f'nodes "{name}" not found') from None
