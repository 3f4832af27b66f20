"""Wiring the daemons: each one alone (``apid``, ``schedulerd``, ``reaperd``, ``workerd``) or all
four in one process with a local etcd (``up``). Runs until SIGTERM/SIGINT, then stops cleanly.

Stopping never stops containers: workerd leaves them to run, and a restarted workerd finds
them on disk. ``up`` starts the node agent before the reaper, so the reaper of a restarted
all-in-one cluster finds the node alive and leaves its pods alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Awaitable, Callable

from ..api.server import serve as serve_api
from ..cluster.etcd_server import EtcdServer
from ..cluster.keys import Keys
from ..cluster.reaper import Reaper
from ..cluster.registry import Nodes, Pods
from ..cluster.scheduler import Scheduler
from ..cluster.store import Store
from ..node.agent import Agent, AgentConfig
from ..node.http import serve as serve_node
from ..node.network import ensure_default_config

log = logging.getLogger("thingdoer")


def run_until_signalled(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main()`` in a new event loop until it ends or SIGTERM/SIGINT cancels it."""

    async def runner() -> None:
        task = asyncio.create_task(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopped")

    asyncio.run(runner())


async def apid(store: Store, keys: Keys, host: str, port: int, started: asyncio.Event | None = None) -> None:
    log.info("apid listening on http://%s:%d", host, port)
    await serve_api(store, keys, host, port, started)


async def schedulerd(store: Store, keys: Keys) -> None:
    log.info("schedulerd running")
    await Scheduler(Pods(store, keys), Nodes(store, keys)).run()


async def reaperd(store: Store, keys: Keys, resync: float = 10.0) -> None:
    log.info("reaperd running")
    reaper = Reaper(store, keys, Pods(store, keys), Nodes(store, keys), resync=resync)
    await asyncio.gather(reaper.run(), reaper.resync_forever())


async def workerd(store: Store, keys: Keys, config: AgentConfig,
                  registered: asyncio.Event | None = None) -> None:
    agent = Agent(store, keys, config)
    http_started = asyncio.Event()
    tasks = [asyncio.create_task(serve_node(agent, http_started)), asyncio.create_task(agent.run())]
    try:
        await _first_failure(tasks, until=agent.registered)
        log.info("workerd %s running (agent API on http://%s:%d)", config.name, config.address,
                 config.port)
        if registered is not None:
            registered.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _first_failure(tasks: list[asyncio.Task], until: asyncio.Event) -> None:
    """Wait for ``until``, re-raising at once if one of ``tasks`` fails first."""
    waiter = asyncio.create_task(until.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            task.result()


async def with_store(endpoints: str, prefix: str, body: Callable[[Store, Keys], Awaitable[None]]) -> None:
    async with Store(endpoints) as store:
        await body(store, Keys(prefix))


async def up(state_dir: Path, *, etcd_port: int, api_host: str, api_port: int,
             agent: AgentConfig, prefix: str) -> None:
    """etcd as a child process, then workerd, apid, schedulerd and reaperd in this process."""
    etcd = EtcdServer(state_dir / "etcd", client_port=etcd_port, peer_port=etcd_port + 1)
    await asyncio.to_thread(etcd.start)
    log.info("etcd running at %s (data in %s)", etcd.endpoint, etcd.data_dir)
    try:
        async with Store(etcd.endpoint) as store:
            keys = Keys(prefix)
            if agent.network.mode != "none" and await ensure_default_config(store, agent.network.flannel_prefix):
                log.info("wrote the default pod network config under %s", agent.network.flannel_prefix)
            registered, api_started = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(workerd(store, keys, agent, registered))]
            await _first_failure(tasks, until=registered)
            tasks.append(asyncio.create_task(apid(store, keys, api_host, api_port, api_started)))
            await _first_failure(tasks, until=api_started)
            tasks += [asyncio.create_task(schedulerd(store, keys)),
                      asyncio.create_task(reaperd(store, keys))]
            log.info("cluster up: apid at http://%s:%d", api_host, api_port)
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.to_thread(etcd.stop)
