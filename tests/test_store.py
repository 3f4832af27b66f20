"""The etcd store against a real etcd: compare-and-swap writes, leases, and watches that
survive an etcd restart and re-list after a compaction."""

from __future__ import annotations

import asyncio

import pytest

from thingdoer.errors import AlreadyExists, Conflict, Gone, NotFound, Unavailable
from thingdoer.cluster.store import DELETE, PUT, Listing, Store

from .conftest import needs_etcd

pytestmark = [pytest.mark.etcd, needs_etcd]

GUARD = 30  # seconds: a hang guard, not a timing check


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def test_create_is_create_if_absent(etcd, prefix):
    async def body():
        async with Store(etcd.endpoint) as store:
            revision = await store.create(f"{prefix}/a", b"1")
            with pytest.raises(AlreadyExists):
                await store.create(f"{prefix}/a", b"2")
            kv = await store.get(f"{prefix}/a")
            assert (kv.value, kv.mod_revision) == (b"1", revision)
    run(body())


def test_update_and_delete_are_compare_and_swap_on_mod_revision(etcd, prefix):
    async def body():
        async with Store(etcd.endpoint) as store:
            first = await store.create(f"{prefix}/a", b"1")
            second = await store.update(f"{prefix}/a", b"2", first)
            with pytest.raises(Conflict):
                await store.update(f"{prefix}/a", b"stale", first)
            with pytest.raises(NotFound):
                await store.update(f"{prefix}/missing", b"x", first)
            with pytest.raises(Conflict):
                await store.delete(f"{prefix}/a", first)
            assert (await store.get(f"{prefix}/a")).value == b"2"
            assert await store.delete(f"{prefix}/a", second) is True
            assert await store.delete(f"{prefix}/a") is False
    run(body())


def test_list_is_a_consistent_snapshot_with_its_revision(etcd, prefix):
    async def body():
        async with Store(etcd.endpoint) as store:
            await store.create(f"{prefix}/b", b"2")
            last = await store.create(f"{prefix}/a", b"1")
            listing = await store.list(f"{prefix}/")
            assert [kv.key for kv in listing.items] == [f"{prefix}/a", f"{prefix}/b"]
            assert listing.revision >= last
    run(body())


def test_a_key_on_a_lease_disappears_when_the_lease_is_not_renewed(etcd, prefix):
    async def body():
        async with Store(etcd.endpoint) as store:
            lease = await store.grant_lease(1)
            await store.put(f"{prefix}/alive", b"x", lease=lease)
            assert await store.keep_alive(lease) >= 1
            for _ in range(100):
                if await store.get(f"{prefix}/alive") is None:
                    break
                await asyncio.sleep(0.1)
            assert await store.get(f"{prefix}/alive") is None
            with pytest.raises(NotFound):
                await store.keep_alive(lease)
    run(body())


def test_watch_resumes_after_an_etcd_restart_without_losing_or_repeating_events(own_etcd, prefix):
    """Events written while etcd was down-and-back are delivered once, in order."""
    async def body():
        async with Store(own_etcd.endpoint) as store:
            start = await store.create(f"{prefix}/k0", b"0")
            seen: list[tuple[str, str]] = []
            got_first, done = asyncio.Event(), asyncio.Event()

            async def consume():
                async for event in store.watch(f"{prefix}/", start, retry_delay=0.1):
                    seen.append((event.kind, event.key.rsplit("/", 1)[-1]))
                    got_first.set()
                    if len(seen) == 4:
                        done.set()
                        return

            task = asyncio.create_task(consume())
            await got_first.wait()
            await asyncio.to_thread(own_etcd.kill)
            await asyncio.to_thread(own_etcd.start)
            # Fresh connection for the writes: the watcher must find its way back by itself.
            async with Store(own_etcd.endpoint) as writer:
                await writer.create(f"{prefix}/k1", b"1")
                await writer.put(f"{prefix}/k1", b"1b")
                await writer.delete(f"{prefix}/k0")
            await asyncio.wait_for(done.wait(), GUARD)
            await task
            assert seen == [(PUT, "k0"), (PUT, "k1"), (PUT, "k1"), (DELETE, "k0")]
    run(body())


def test_watch_from_a_compacted_revision_is_gone_and_follow_relists(own_etcd, prefix):
    async def body():
        async with Store(own_etcd.endpoint) as store:
            old = await store.create(f"{prefix}/a", b"1")
            await store.put(f"{prefix}/a", b"2")
            latest = await store.put(f"{prefix}/b", b"3")
            await store._client.compact(latest)  # as etcd's auto-compaction would
            with pytest.raises(Gone):
                async for _ in store.watch(f"{prefix}/", old):
                    pass
            follow = store.follow(f"{prefix}/")
            first = await follow.__anext__()
            assert isinstance(first, Listing)
            assert {kv.key: kv.value for kv in first.items} == {f"{prefix}/a": b"2", f"{prefix}/b": b"3"}
            await follow.aclose()
    run(body())


def test_an_unreachable_etcd_is_unavailable_naming_the_endpoint():
    async def body():
        async with Store("http://127.0.0.1:1", timeout=1) as store:
            with pytest.raises(Unavailable) as err:
                await store.get("/x")
            assert "127.0.0.1:1" in str(err.value)
    run(body())


def test_watch_events_say_whether_they_created_and_what_they_replaced(etcd, prefix):
    async def body():
        async with Store(etcd.endpoint) as store:
            start = await store.create(f"{prefix}/a", b"1")
            await store.put(f"{prefix}/a", b"2")
            await store.delete(f"{prefix}/a")
            events = []
            async for event in store.watch(f"{prefix}/", start):
                events.append((event.kind, event.created, event.value, event.previous))
                if len(events) == 3:
                    break
            assert events == [(PUT, True, b"1", None), (PUT, False, b"2", b"1"), (DELETE, False, b"2", None)]
    run(body())
