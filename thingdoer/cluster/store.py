"""The only module that talks to etcd (through aetcd).

It promises:

- every write that changes an object is a compare-and-swap: ``create`` only if the key is absent,
  ``update``/``delete`` only if its ``mod_revision`` is still the one the caller read
  (``Conflict`` otherwise);
- ``watch`` survives etcd restarts and dropped connections by re-subscribing from the revision
  after the last event it delivered, so no event is lost or repeated; when that revision has
  been compacted it raises ``Gone`` and ``follow`` re-lists;
- etcd's own exceptions never leave this module: they become ``Unavailable`` (with the endpoint)
  or one of the other kinds in ``thingdoer.errors``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import aetcd
import aetcd.exceptions
import aetcd.rtypes

from ..errors import AlreadyExists, Conflict, Gone, NotFound, Unavailable

log = logging.getLogger(__name__)

PUT, DELETE = "PUT", "DELETE"


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """One change under a watched prefix. For DELETE, ``value`` is the value before deletion."""

    kind: str
    key: str
    value: bytes
    revision: int
    created: bool = False  # a PUT that created the key (Kubernetes: ADDED, not MODIFIED)
    previous: bytes | None = None  # for a PUT over an existing key: the value it replaced


@dataclass(frozen=True)
class Listing:
    """A consistent snapshot of a prefix at ``revision``; watch from ``revision + 1``."""

    items: list[KV]
    revision: int


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://127.0.0.1:2379`` or ``127.0.0.1:2379`` → (host, port)."""
    hostport = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} must look like http://HOST:PORT")
    return host, int(port)


class Store:
    """An etcd client bound to one endpoint list. Use ``async with Store(...) as store``."""

    def __init__(self, endpoints: str | list[str], *, timeout: float = 5.0):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self.endpoints = endpoints
        self._timeout = timeout
        self._index = 0
        self._client = self._new_client()

    def _new_client(self) -> aetcd.Client:
        host, port = parse_endpoint(self.endpoints[self._index % len(self.endpoints)])
        return aetcd.Client(host=host, port=port, timeout=self._timeout)

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception:  # closing a channel to a dead server may fail; nothing is lost
            pass

    def _unavailable(self, err: Exception) -> Unavailable:
        return Unavailable(f"etcd at {','.join(self.endpoints)} is unavailable: "
                           f"{err or type(err).__name__}")

    async def _call(self, coro):
        try:
            return await coro
        except aetcd.exceptions.ClientError as err:
            if len(self.endpoints) > 1:  # try the next endpoint on the next call
                self._index += 1
                old, self._client = self._client, self._new_client()
                asyncio.ensure_future(old.close())
            raise self._unavailable(err) from err

    # -- reads --------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        got = await self._call(self._client.get(key.encode()))
        if got is None:
            return None
        return KV(key, got.value, got.mod_revision, got.lease)

    async def list(self, prefix: str) -> Listing:
        got = await self._call(self._client.get_prefix(prefix.encode(), sort_target="key"))
        items = [KV(kv.key.decode(), kv.value, kv.mod_revision, kv.lease) for kv in got]
        return Listing(items, got.header.revision)

    async def revision(self) -> int:
        """The store's current revision (what a list of an empty prefix would return)."""
        return (await self.list("\0")).revision

    # -- compare-and-swap writes --------------------------------------------------------

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` only if it does not exist; returns the new mod_revision."""
        tx = self._client.transactions
        ok, responses = await self._call(self._client.transaction(
            compare=[tx.create(key.encode()) == 0],
            success=[tx.put(key.encode(), value, lease=lease or None)],
            failure=[],
        ))
        if not ok:
            raise AlreadyExists(f"{key} already exists")
        return responses[0].response_put.header.revision

    async def update(self, key: str, value: bytes, mod_revision: int) -> int:
        """Overwrite ``key`` only if it is unchanged since ``mod_revision``."""
        tx = self._client.transactions
        ok, responses = await self._call(self._client.transaction(
            compare=[tx.mod(key.encode()) == mod_revision],
            success=[tx.put(key.encode(), value)],
            failure=[tx.get(key.encode())],
        ))
        if not ok:
            if not responses or not responses[0]:
                raise NotFound(f"{key} does not exist")
            raise Conflict(f"{key} was modified (expected revision {mod_revision})")
        return responses[0].response_put.header.revision

    async def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only if unchanged since ``mod_revision``, when given).

        Returns False when there was nothing to delete.
        """
        tx = self._client.transactions
        compare = [tx.mod(key.encode()) == mod_revision] if mod_revision else [tx.version(key.encode()) > 0]
        ok, responses = await self._call(self._client.transaction(
            compare=compare, success=[tx.delete(key.encode())], failure=[tx.get(key.encode())]))
        if ok:
            return True
        if mod_revision and responses and responses[0]:
            raise Conflict(f"{key} was modified (expected revision {mod_revision})")
        return False

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write, for keys one owner writes alone (liveness, leases)."""
        got = await self._call(self._client.put(key.encode(), value, lease=lease or None))
        return got.header.revision

    # -- leases -------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        lease = await self._call(self._client.lease(ttl))
        return lease.id

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh a lease; returns its remaining TTL. ``NotFound`` once it has expired."""
        reply = await self._call(self._client.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            raise NotFound(f"lease {lease_id:x} has expired")
        return reply.TTL

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._call(self._client.revoke_lease(lease_id))
        except Unavailable:
            raise
        except Exception as err:  # revoking an expired lease is not an error for us
            log.debug("revoke lease %x: %s", lease_id, err)

    # -- watches ------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int,
                    *, retry_delay: float = 0.2) -> AsyncIterator[Event]:
        """Events under ``prefix`` from ``start_revision`` on, forever.

        A broken stream (etcd restarted, connection lost) is re-opened from the revision after
        the last delivered event, retrying every ``retry_delay`` s while etcd is down. Raises
        ``Gone`` when ``start_revision`` (or the resume point) has been compacted.
        """
        next_revision = start_revision
        while True:
            try:
                watch = await self._client.watch_prefix(
                    prefix.encode(), start_revision=next_revision, prev_kv=True)
                try:
                    async for event in watch:
                        kv = event.kv
                        is_delete = event.kind == DELETE
                        value = (event.prev_kv.value if is_delete and event.prev_kv else kv.value)
                        next_revision = kv.mod_revision + 1
                        # aetcd hands an empty KeyValue when there was no previous value.
                        had_previous = event.prev_kv is not None and event.prev_kv.key
                        previous = event.prev_kv.value if had_previous and not is_delete else None
                        yield Event(DELETE if is_delete else PUT, kv.key.decode(), value,
                                    kv.mod_revision, kv.create_revision == kv.mod_revision, previous)
                finally:
                    await _quietly(watch.cancel())
            except aetcd.exceptions.RevisionCompactedError as err:
                raise Gone(f"revision {next_revision} of {prefix} was compacted "
                           f"(oldest kept: {err.compacted_revision})") from err
            except (aetcd.exceptions.ClientError, OSError) as err:
                log.info("watch on %s interrupted (%s); resuming from revision %d",
                         prefix, err or type(err).__name__, next_revision)
                await asyncio.sleep(retry_delay)
            except Exception as err:  # grpc raises its own errors when a stream breaks
                if type(err).__module__.startswith("grpc"):
                    log.info("watch on %s broke (%s); resuming from revision %d",
                             prefix, type(err).__name__, next_revision)
                    await asyncio.sleep(retry_delay)
                else:
                    raise

    async def follow(self, prefix: str, *, retry_delay: float = 0.2) -> AsyncIterator[Listing | Event]:
        """A ``Listing`` of ``prefix``, then its events; a new ``Listing`` after a compaction.

        The one list-then-watch loop every daemon uses: consumers rebuild their view from a
        ``Listing`` and apply each ``Event`` to it.
        """
        while True:
            try:
                listing = await self.list(prefix)
            except Unavailable as err:
                log.info("%s; retrying", err)
                await asyncio.sleep(retry_delay)
                continue
            yield listing
            try:
                async for event in self.watch(prefix, listing.revision + 1, retry_delay=retry_delay):
                    yield event
            except Gone as err:
                log.info("%s; listing again", err)


async def _quietly(coro) -> None:
    try:
        await asyncio.wait_for(coro, 1.0)
    except Exception:
        pass
