"""The node's containers on disk: create, observe, stop and remove them (synchronous I/O).

Layout under the agent's state dir (the node's memory: enough to rebuild its view after a
``kill -9`` of the agent):

    pods/<pod uid>/pod.json           namespace, name and uid of the pod
    pods/<pod uid>/<container>/       the OCI bundle: config.json, rootfs (an overlay), and the
                                      supervisor's files (``oci/shim.py``: shim.pid, pid, exit,
                                      container.log)
    pods/<pod uid>/<container>.restarts.json   restarts so far and the last run's end
    pods/<pod uid>/<container>.previous.log    the last run's output

Each container runs as runtime container ``<pod uid>-<container>`` in cgroup
``/<cgroup parent>/pod<uid>/<container>``. Pod uids come from etcd; they are checked to be
UUIDs before they name a directory, container names are DNS labels, so no path escapes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..cgroups import fs as cgroupfs
from ..cgroups.driver import detect as detect_cgroups
from ..cgroups.resources import linux_resources, pod_limits
from ..errors import Invalid, NotFound
from ..models import Container, Pod
from ..oci import shim
from ..oci.image import ImageStore, prepare_rootfs, release_rootfs
from ..oci.reference import should_pull
from ..oci.registry import Settings, pull
from ..oci.runc import Runtime
from ..oci.spec import merge_process, runtime_spec
from . import oom
from .logs import rotated
from .observed import CREATED, EXITED, RUNNING_STATE, Observed

log = logging.getLogger(__name__)

IMAGE_ID = "image.id"  # the manifest digest the container was started from
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class NodeConfig:
    state_dir: Path
    runtime: str = "runc"
    cgroup_parent: str = "thingdoer"
    pids_limit: int = 4096
    overlay: bool = True
    log_max_size: int = shim.LOG_MAX_SIZE  # bytes per container log file before it rotates
    log_max_files: int = shim.LOG_MAX_FILES  # files kept per container, the live one included
    insecure_registries: tuple[str, ...] = ()  # host[:port] pulled from over plain HTTP
    registry_config: Path | None = None  # a Docker config.json with registry credentials

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"


def check_uid(uid: str) -> str:
    if not _UUID.match(uid or ""):
        raise Invalid(f"pod uid {uid!r} is not a UUID: refusing to use it as a path")
    return uid


class Containers:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.runtime = Runtime(config.state_dir / "runc", config.runtime)
        self.images = ImageStore(config.images_dir / "oci")
        self.cgroups = detect_cgroups()  # the v2 or v1 driver, by the host's mode
        config.pods_dir.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------

    def pod_dir(self, uid: str) -> Path:
        return self.config.pods_dir / check_uid(uid)

    def bundle(self, uid: str, container: str) -> Path:
        return self.pod_dir(uid) / container

    def log_path(self, uid: str, container: str) -> Path:
        return self.bundle(uid, container) / shim.LOG

    @staticmethod
    def container_id(uid: str, container: str) -> str:
        return f"{uid}-{container}"

    def cgroup(self, uid: str, container: str | None = None) -> str:
        path = f"/{self.config.cgroup_parent}/pod{uid}"
        return f"{path}/{container}" if container else path

    # -- what is there -------------------------------------------------------------------

    def pods_on_disk(self) -> dict[str, dict]:
        """uid → the pod.json of every pod this node holds files for."""
        found = {}
        for entry in self.config.pods_dir.iterdir():
            if _UUID.match(entry.name):
                try:
                    found[entry.name] = json.loads((entry / "pod.json").read_text())
                except (OSError, ValueError):
                    found[entry.name] = {"uid": entry.name}
        return found

    def observe(self, uid: str, container: str) -> Observed | None:
        bundle = self.bundle(uid, container)
        if not (bundle / shim.SHIM_PID).exists():
            return None
        files = shim.observe(bundle)
        image_id = _read(bundle / IMAGE_ID)
        cid = self.container_id(uid, container)
        if files.exited:
            start_error = None if files.created else (files.start_error or "the runtime failed")
            return Observed(container, cid, image_id, EXITED, files.started_at, files.finished_at,
                            files.exit_code, start_error,
                            oom.oom_killed(self.cgroups, bundle, self.cgroup(uid), files.exit_code))
        if not files.supervisor_alive:
            # The supervisor was killed before it could record the status: the container's
            # own fate is unknown, and it is not running under supervision any more.
            return Observed(container, cid, image_id, EXITED, files.started_at, files.finished_at,
                            None, None)
        return Observed(container, cid, image_id, RUNNING_STATE if files.created else CREATED,
                        files.started_at)

    # -- lifecycle -----------------------------------------------------------------------

    def apply_pod_cgroup(self, pod: Pod) -> None:
        """Create ``/<parent>/pod<uid>`` with the pod's limits (``cgroups.resources.pod_limits``)
        before any of its containers starts beneath it; idempotent."""
        limits = pod_limits([(c.resources.requests, c.resources.limits) for c in pod.spec.containers],
                            pod.metadata.annotations, self.config.pids_limit)
        self.cgroups.apply(self.cgroup(pod.metadata.uid), limits)

    def pull_image(self, container: Container) -> None:
        """Pull the container's image if its imagePullPolicy says so (``oci/reference.py``);
        NotFound when it is absent and may not be pulled."""
        present = self.images.present(container.image)
        if should_pull(container.imagePullPolicy, container.image, present):
            pull(container.image, self.images, Settings.load(self.config.insecure_registries,
                                                             self.config.registry_config),
                 layers_dir=self.config.images_dir / "layers")
        elif not present:
            raise NotFound(f'image "{container.image}" is not on this node and is not pulled '
                           f"(imagePullPolicy {container.imagePullPolicy or 'IfNotPresent'}, "
                           "or a localhost/ image): import it with `thingdoer image import`")

    def start(self, pod: Pod, container: Container, network=None) -> None:
        """Unpack the image, write the bundle and start the supervisor. ``network`` (a
        ``node.network.PodWiring``) names the pod's netns to join and files to bind-mount.

        On failure nothing of the bundle is left, so the next attempt starts clean.
        """
        uid = pod.metadata.uid
        image = self.images.resolve(container.image)
        pod_dir = self.pod_dir(uid)
        pod_dir.mkdir(parents=True, exist_ok=True)
        meta = {"namespace": pod.metadata.namespace, "name": pod.metadata.name, "uid": uid}
        (pod_dir / "pod.json").write_text(json.dumps(meta))
        self.apply_pod_cgroup(pod)
        bundle = self.bundle(uid, container.name)
        if bundle.exists():  # a start that died half-way: the supervisor never ran
            self._remove_bundle(uid, container.name)
        bundle.mkdir()
        try:
            argv, env, cwd = merge_process(
                image.config, container.command, container.args,
                [(e.name, e.value) for e in container.env or []], container.workingDir)
            spec = runtime_spec(
                args=argv, env=env, cwd=cwd, rootfs=str(bundle / "rootfs"),
                hostname=pod.spec.hostname or pod.metadata.name,
                cgroups_path=self.cgroup(uid, container.name),
                resources=linux_resources(container.resources.requests, container.resources.limits),
                annotations={"io.kubernetes.pod.name": pod.metadata.name,
                             "io.kubernetes.pod.namespace": pod.metadata.namespace or "default",
                             "io.kubernetes.pod.uid": uid,
                             "io.kubernetes.container.name": container.name},
                join_namespaces={"network": network.netns} if network and network.netns else None)
            if network:  # node/network.py's PodWiring: the pod's /etc/hosts and resolv.conf
                spec["mounts"] += network.mounts
            (bundle / "config.json").write_text(json.dumps(spec, indent=1))
            (bundle / IMAGE_ID).write_text(image.manifest_digest)
            prepare_rootfs(image, self.config.images_dir / "layers", bundle / "rootfs",
                           overlay=self.config.overlay)
            shim.spawn(self.runtime, self.container_id(uid, container.name), bundle,
                       log_max_size=self.config.log_max_size, log_max_files=self.config.log_max_files)
        except BaseException:
            self._remove_bundle(uid, container.name)
            raise

    def history(self, uid: str, container: str) -> tuple[int, dict | None]:
        """(restarts so far, the last run's terminated state as JSON) of a container."""
        try:
            data = json.loads((self.pod_dir(uid) / f"{container}.restarts.json").read_text())
            return int(data["count"]), data.get("last")
        except (OSError, ValueError, KeyError):
            return 0, None

    def previous_log_path(self, uid: str, container: str) -> Path:
        return self.pod_dir(uid) / f"{container}.previous.log"

    def recycle(self, uid: str, container: str, last: dict) -> None:
        """Before a restart: remember the exited run (its status and log), remove its bundle."""
        count, _ = self.history(uid, container)
        history = self.pod_dir(uid) / f"{container}.restarts.json"
        tmp = history.with_name(history.name + ".tmp")
        tmp.write_text(json.dumps({"count": count + 1, "last": last}))
        os.replace(tmp, history)
        previous = self.previous_log_path(uid, container)
        for old in rotated(previous):  # the run before the last one is forgotten
            old.unlink()
        log = self.log_path(uid, container)
        for path in rotated(log):  # the CRI log and its rotated files keep their suffixes
            os.replace(path, previous.with_name(previous.name + path.name[len(log.name):]))
        self._remove_bundle(uid, container)

    def signal(self, uid: str, container: str, signal: int) -> None:
        """Send ``signal`` to every process of the container; a container that is gone is fine."""
        try:
            self.runtime.kill(self.container_id(uid, container), signal, all=True)
        except NotFound:
            pass

    def remove_pod(self, uid: str) -> None:
        """Delete every container of the pod, its files and its cgroup. Idempotent.

        Call it only once the containers have stopped (or to force them: ``runc delete
        --force`` kills what still runs)."""
        pod_dir = self.pod_dir(uid)
        if pod_dir.is_dir():
            for bundle in pod_dir.iterdir():
                if bundle.is_dir() and not bundle.name.startswith("."):
                    self._remove_bundle(uid, bundle.name)
            shutil.rmtree(pod_dir, ignore_errors=True)
        cgroupfs.remove_tree(self.cgroup(uid))

    def _remove_bundle(self, uid: str, container: str) -> None:
        bundle = self.bundle(uid, container)
        shim.wait_settled(bundle, timeout=10.0)
        self.runtime.delete(self.container_id(uid, container), force=True)
        shim.wait_gone(bundle, timeout=5.0)  # let the supervisor record the exit and leave
        release_rootfs(bundle / "rootfs")
        # Rename first, then remove: a crash half-way never leaves a bundle that looks alive.
        doomed = bundle.with_name(f".deleting-{container}")
        if bundle.exists():
            shutil.rmtree(doomed, ignore_errors=True)
            bundle.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
