"""workerd, the node agent: registers its Node, keeps it alive, and runs the pods bound to it.

Level-triggered, one serial worker per pod (two events for one pod never race): each pass
compares what etcd wants (the pod) with what the node has (``Containers.observe``, read from
disk) and does what closes the gap — start a missing container, stop containers of a pod
being deleted, report the status that follows. Every watch event, every container exit and
a periodic resync trigger a pass, so a lost event only delays, never loses, a change.

Liveness: ``alive/<node>`` is bound to an etcd lease renewed every ``renew`` seconds; if the
agent dies, etcd drops the key after ``ttl`` seconds and reaperd takes over. Stopping the
agent leaves its containers running: nothing here stops a container except a pod deletion,
a pod that etcd says has ended, or a pod that no longer exists.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from ..cluster.informer import Informer
from ..cluster.keys import Keys
from ..cluster.registry import Nodes, Pods
from ..cluster.store import Store
from ..errors import Conflict, Invalid, NotFound, ThingdoerError, Unavailable
from ..models import (ContainerStateTerminated, Node, NodeAddress, NodeCondition, NodeStatus,
                      ObjectMeta, Pod, is_terminal, new_uid, now, parse_time)
from ..models.node import DaemonEndpoint, NodeDaemonEndpoints
from ..oci import shim
from . import host
from .containers import Containers, NodeConfig
from .oom import OomMonitor
from .stats import Collector
from .network import Network, NetworkOptions
from .observed import (EXITED, RUNNING_STATE, container_status, desired_status, same_status,
                       terminated_state)
from .restart import backoff, should_restart

log = logging.getLogger(__name__)

KILL_WAIT = 10.0  # seconds to wait for a SIGKILLed container to be reaped
START_RETRY = 10.0  # seconds before a container that failed to start is tried again
GONE = "gone"
CGROUP_MODE_LABEL = "thingdoer.io/cgroup-mode"  # v1 | v2: which cgroup driver the node runs


@dataclass
class AgentConfig:
    name: str
    node: NodeConfig
    address: str = "127.0.0.1"
    port: int = 10250
    labels: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, str] = field(default_factory=dict)  # overrides of what the host has
    reserved: dict[str, str] = field(default_factory=dict)
    lease_ttl: int = 3
    renew_interval: float = 1.0
    resync_interval: float = 10.0
    network: NetworkOptions = field(default_factory=NetworkOptions)  # default mode: none


class Agent:
    def __init__(self, store: Store, keys: Keys, config: AgentConfig):
        self.store, self.keys, self.config = store, keys, config
        self.pods = Pods(store, keys)
        self.nodes = Nodes(store, keys)
        self.containers = Containers(config.node)
        self.oom = OomMonitor(self.containers.cgroups, self.poke)  # v1: catches kills as they happen
        self.stats = Collector(self.containers.cgroups, self.containers.cgroup, self.mine, config.name)
        self.network = Network(store, config.network, config.node.state_dir, config.name)
        self.cache = Informer(self.pods, lambda p: p.metadata.uid or "")
        self._dirty: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._waiters: dict[tuple[str, str], asyncio.Task] = {}
        self._start_errors: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._pull_failures: dict[tuple[str, str], int] = {}  # failed pulls in a row
        self._lease = 0
        self.registered = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    # -- the node --------------------------------------------------------------------------

    def _node(self, runtime_version: str) -> Node:
        capacity = {"cpu": host.cpu_capacity(), "memory": host.memory_capacity(), "pods": "110"}
        capacity.update(self.config.capacity)
        stamp = now()
        return Node(
            metadata=ObjectMeta(name=self.name, uid=new_uid(), creationTimestamp=stamp, labels={
                "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                CGROUP_MODE_LABEL: self.containers.cgroups.mode, **self.config.labels}),
            status=NodeStatus(
                capacity=capacity, allocatable=host.allocatable(capacity, self.config.reserved),
                conditions=[self._ready_condition(stamp)],
                addresses=[NodeAddress(type="InternalIP", address=self.config.address),
                           NodeAddress(type="Hostname", address=self.name)],
                daemonEndpoints=NodeDaemonEndpoints(kubeletEndpoint=DaemonEndpoint(Port=self.config.port)),
                nodeInfo=host.system_info(runtime_version)))

    @staticmethod
    def _ready_condition(stamp: str) -> NodeCondition:
        return NodeCondition(type="Ready", status="True", reason="AgentReady",
                             message="thingdoer workerd is posting ready status",
                             lastHeartbeatTime=stamp, lastTransitionTime=stamp)

    async def register(self) -> None:
        """Take a lease, mark this node alive on it, then write the Node as Ready.

        The alive key comes first so a reaper never sees a Ready node without one."""
        self._lease = await self.store.grant_lease(self.config.lease_ttl)
        await self.store.put(self.keys.alive(self.name), now().encode(), lease=self._lease)
        version = await asyncio.to_thread(self.containers.runtime.version)
        fresh = self._node(version)
        try:
            await self.nodes.create(fresh)
        except ThingdoerError as err:
            if err.reason != "AlreadyExists":
                raise

            def refresh(node: Node) -> None:
                node.metadata.labels = fresh.metadata.labels  # uid and creation time stay
                node.status = fresh.status
            await self.nodes.mutate(self.keys.node(self.name), refresh)
        self.registered.set()
        log.info("node %s registered (lease %x, ttl %ss)", self.name, self._lease, self.config.lease_ttl)

    async def heartbeat(self) -> None:
        """Renew the lease; if it lapsed (etcd unreachable for a TTL), register again."""
        while True:
            await asyncio.sleep(self.config.renew_interval)
            try:
                await self.store.keep_alive(self._lease)
            except NotFound:
                log.warning("node %s: lease expired; registering again", self.name)
                await self._register_quietly()
            except Unavailable as err:
                log.warning("node %s: cannot renew lease: %s", self.name, err)

    async def _register_quietly(self) -> None:
        try:
            await self.register()
        except (Unavailable, Conflict) as err:
            log.warning("node %s: registering: %s", self.name, err)

    # -- the pods --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.network.start()  # before the node is Ready: pods need their subnet
        await self.register()
        tasks = [asyncio.create_task(self.heartbeat()), asyncio.create_task(self.cache.run()),
                 asyncio.create_task(self._dispatch()), asyncio.create_task(self._resync()),
                 asyncio.create_task(self.network.run()), asyncio.create_task(self.stats.run())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks + list(self._workers.values()) + list(self._waiters.values()):
                task.cancel()

    def mine(self) -> dict[str, Pod]:
        return {uid: p for uid, p in self.cache.objects.items() if p.spec.nodeName == self.name}

    async def _dispatch(self) -> None:
        """Wake the worker of every pod of this node that changed or was deleted."""
        await self.cache.synced.wait()
        await self._collect_orphans()
        while True:
            await self.cache.changed.wait()
            self.cache.changed.clear()
            for pod in self.cache.drain():
                if pod.spec.nodeName == self.name and pod.metadata.uid:
                    self.poke(pod.metadata.uid)

    async def _resync(self) -> None:
        await self.cache.synced.wait()
        while True:
            await asyncio.sleep(self.config.resync_interval)
            for uid in self.mine():
                self.poke(uid)
            await self._collect_orphans()

    async def _collect_orphans(self) -> None:
        """Pods this node has files for but etcd does not assign to it any more."""
        on_disk = await asyncio.to_thread(self.containers.pods_on_disk)
        on_disk = on_disk.keys() | await asyncio.to_thread(self.network.known_pods)
        for uid in on_disk - self.mine().keys():
            self.poke(uid)

    def poke(self, uid: str) -> None:
        """Ask for a reconcile pass of pod ``uid`` (coalesced with any already pending)."""
        if uid not in self._workers:
            self._dirty[uid] = asyncio.Event()
            self._workers[uid] = asyncio.create_task(self._work(uid, self._dirty[uid]))
        self._dirty[uid].set()

    async def _work(self, uid: str, dirty: asyncio.Event) -> None:
        """The pod's one serial worker; it ends once the pod is gone from node and etcd."""
        try:
            while True:
                await dirty.wait()
                dirty.clear()
                try:
                    if await self.reconcile(uid) == GONE:
                        return
                except (Unavailable, Conflict) as err:
                    log.info("pod %s: %s; retrying", uid, err)
                    await asyncio.sleep(0.5)
                    dirty.set()
                except Exception:
                    log.exception("pod %s: reconcile failed; the resync will retry", uid)
        finally:
            self._workers.pop(uid, None)
            self._dirty.pop(uid, None)

    async def reconcile(self, uid: str) -> str | None:
        """One pass for pod ``uid``; returns ``GONE`` once nothing of the pod is left."""
        pod = self.mine().get(uid)
        if pod is None:  # gone from etcd, or bound elsewhere: nothing of it may keep running
            await self._stop(uid, grace=0)
            await asyncio.to_thread(self.containers.remove_pod, uid)
            await asyncio.to_thread(self.network.unwire, uid)
            self._forget(uid)
            return GONE
        if pod.metadata.deletionTimestamp:
            await self._stop(uid, grace=pod.metadata.deletionGracePeriodSeconds or 0)
            await asyncio.to_thread(self.containers.remove_pod, uid)
            await asyncio.to_thread(self.network.unwire, uid)
            self._forget(uid)
            await self.pods.delete_at(self.keys.pod(*pod.key), pod.metadata.resourceVersion)
            log.info("pod %s/%s deleted", *pod.key)
            return GONE
        if is_terminal(pod.status.phase):
            await self._stop(uid, grace=pod.spec.terminationGracePeriodSeconds)  # e.g. lost, then back
            return None
        loop = asyncio.get_running_loop()
        try:
            wiring = await asyncio.to_thread(self.network.wire, pod)  # before any container starts
        except (Invalid, Unavailable) as err:  # e.g. no free pod address: shown; the resync retries
            for container in pod.spec.containers:
                self._start_errors[(uid, container.name)] = (
                    "CreateContainerError", f"pod network: {err}", loop.time())
            await self._report(pod)
            return None
        for container in pod.spec.containers:
            failed = self._start_errors.get((uid, container.name))
            retry_in = self._retry_in((uid, container.name))
            if failed and loop.time() - failed[2] < retry_in:
                # ErrImagePull for the first half of the back-off, then ImagePullBackOff (a
                # time, not a pass count: our own status write triggers the next pass).
                if failed[0] == "ErrImagePull" and loop.time() - failed[2] >= retry_in / 2:
                    self._start_errors[(uid, container.name)] = (
                        "ImagePullBackOff", f'Back-off pulling image "{container.image}": '
                                            f"{failed[1]}", failed[2])
                continue
            obs = self.containers.observe(uid, container.name)
            if obs is None:
                await self._start(pod, container, wiring)
            elif (wait := self._restart_in(pod, obs)) is not None:
                if wait > 0:
                    loop.call_later(wait, self.poke, uid)
                    continue
                await asyncio.to_thread(self.containers.recycle, uid, container.name,
                                        terminated_state(obs).dump())
                await self._start(pod, container, wiring)
        await self._report(pod)
        return None

    def _restart_in(self, pod: Pod, obs) -> float | None:
        """Seconds until the exited container ``obs`` is due for a restart (≤ 0: now), or
        None when the restart policy keeps it exited."""
        if obs.state != EXITED or not should_restart(pod.spec.restartPolicy, obs.exit_code):
            return None
        restarts, _ = self.containers.history(pod.metadata.uid, obs.name)
        finished = parse_time(obs.finished_at).timestamp() if obs.finished_at else 0.0
        return backoff(restarts) - (time.time() - finished)

    async def _start(self, pod: Pod, container, wiring=None) -> None:
        uid, key = pod.metadata.uid, (pod.metadata.uid, container.name)
        now_ = asyncio.get_running_loop().time()
        try:
            await asyncio.to_thread(self.containers.pull_image, container)
        except (ThingdoerError, OSError) as err:
            self._pull_failed(uid, key, err, now_)
            return
        self._pull_failures.pop(key, None)
        try:
            await asyncio.to_thread(self.containers.start, pod, container, wiring)
        except NotFound as err:
            self._start_errors[key] = ("ErrImagePull", str(err), now_)
            return
        except Invalid as err:
            self._start_errors[key] = ("CreateContainerConfigError", str(err), now_)
            return
        except (Unavailable, OSError) as err:
            self._start_errors[key] = ("CreateContainerError", str(err), now_)
            return
        self._start_errors.pop(key, None)
        await asyncio.to_thread(shim.wait_settled, self.containers.bundle(uid, container.name), 5.0)
        self._watch_exit(uid, container.name)

    def _pull_failed(self, uid: str, key: tuple[str, str], err: Exception, now_: float) -> None:
        """Report ErrImagePull with the registry's message and back off (``restart.backoff``);
        a pass half-way through the wait reports ImagePullBackOff, one at its end pulls again."""
        failures = self._pull_failures[key] = self._pull_failures.get(key, 0) + 1
        self._start_errors[key] = ("ErrImagePull", str(err), now_)
        loop = asyncio.get_running_loop()
        delay = backoff(failures - 1)
        loop.call_later(delay / 2, self.poke, uid)
        loop.call_later(delay, self.poke, uid)

    def _retry_in(self, key: tuple[str, str]) -> float:
        """Seconds after a failed start before the next try: the pull back-off after a failed
        pull, START_RETRY otherwise."""
        failures = self._pull_failures.get(key)
        return backoff(failures - 1) if failures else START_RETRY

    def _watch_exit(self, uid: str, name: str) -> None:
        """Poke the pod when this container's supervisor exits."""
        key = (uid, name)
        if key in self._waiters and not self._waiters[key].done():
            return
        self.oom.watch(uid, name, self.containers.cgroup(uid, name), self.containers.bundle(uid, name))

        async def wait() -> None:
            await shim.wait(self.containers.bundle(uid, name))
            self.poke(uid)

        self._waiters[key] = asyncio.create_task(wait())

    async def _report(self, pod: Pod) -> None:
        uid = pod.metadata.uid
        statuses = []
        for container in pod.spec.containers:
            obs = self.containers.observe(uid, container.name)
            if obs is not None and obs.state == RUNNING_STATE:
                self._watch_exit(uid, container.name)
            reason, message, _ = self._start_errors.get((uid, container.name), ("ContainerCreating", None, 0))
            restarts, last = self.containers.history(uid, container.name)
            wait = self._restart_in(pod, obs) if obs is not None else None
            statuses.append(container_status(
                container.image, obs, reason, message, container.name, restarts=restarts,
                last=ContainerStateTerminated.model_validate(last) if last else None,
                backing_off=None if wait is None else backoff(restarts)))
        started = pod.status.startTime or now()
        ip = self.network.address_of(uid)
        want = desired_status(pod, statuses, self.config.address, started)
        want.podIP = str(ip) if ip else want.podIP
        if same_status(pod.status, want):
            return

        def apply(current: Pod) -> bool:
            if current.metadata.uid != uid or current.metadata.deletionTimestamp:
                return False
            current.status = desired_status(current, statuses, self.config.address,
                                            current.status.startTime or started)
            current.status.podIP = str(ip) if ip else current.status.podIP
            return True
        await self.pods.set_status(pod, apply)

    async def _stop(self, uid: str, grace: int) -> None:
        """SIGTERM every running container of the pod, SIGKILL what is left after ``grace``."""
        names = await asyncio.to_thread(self._bundles, uid)
        running = [n for n in names if (o := self.containers.observe(uid, n)) and o.state != EXITED]
        if not running:
            return
        for name in running:
            self._watch_exit(uid, name)
        waiters = [self._waiters[(uid, n)] for n in running]
        if grace > 0:
            for name in running:
                await asyncio.to_thread(self.containers.signal, uid, name, signal.SIGTERM)
            await asyncio.wait(waiters, timeout=grace)
        for name in running:
            if not self._waiters[(uid, name)].done():
                await asyncio.to_thread(self.containers.signal, uid, name, signal.SIGKILL)
        await asyncio.wait(waiters, timeout=KILL_WAIT)

    def _bundles(self, uid: str) -> list[str]:
        pod_dir = self.containers.pod_dir(uid)
        if not pod_dir.is_dir():
            return []
        return [p.name for p in pod_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _forget(self, uid: str) -> None:
        for key in [k for k in self._start_errors if k[0] == uid]:
            self._start_errors.pop(key, None)
        for key in [k for k in self._pull_failures if k[0] == uid]:
            self._pull_failures.pop(key, None)

