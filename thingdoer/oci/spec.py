"""Pure: a container's process and limits → an OCI runtime-spec 1.0.2 ``config.json`` dict.

No I/O here. ``merge_process`` combines the image config with the pod's container fields the way
Kubernetes does; ``runtime_spec`` wraps the result in a config runc accepts, modelled on
``runc spec`` with Docker's default capabilities.

Promises: no ``process.rlimits`` (these hosts lack CAP_SYS_RESOURCE, and an rlimit above the hard
limit fails the start); the process runs as root with noNewPrivileges; every device is denied in
the cgroup except runc's own default set (null, zero, full, tty, urandom, random, ptmx, pts).
"""

from __future__ import annotations

import copy
import re

from thingdoer.errors import Cause, Invalid

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set.
CAPABILITIES = [f"CAP_{c}" for c in (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")]

# As ``runc spec``.
MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NAMESPACES = ["pid", "ipc", "uts", "mount", "network"]


def merge_process(image_config: dict, command: list[str] | None, args: list[str] | None,
                  env: list[tuple[str, str]], working_dir: str | None
                  ) -> tuple[list[str], list[str], str]:
    """(argv, env as "K=V" strings, cwd) for a container, with Kubernetes semantics.

    ``image_config`` is the whole image config document (``Image.config``).
    - argv: ``command`` replaces the image Entrypoint and drops its Cmd; ``args`` replaces Cmd.
      An empty list counts as unset, as in Kubernetes.
    - env: the image Env, then the pod's ``env`` in order; a pod variable replaces an image one of
      the same name in place, new ones are appended. Pod values may use ``$(VAR)`` for pod
      variables defined before them; command and args may use any pod variable (Kubernetes
      expands only the pod's own variables, not the image's).
    - cwd: ``working_dir``, else the image WorkingDir, else "/".
    """
    cfg = image_config.get("config") or {}
    entrypoint, cmd = cfg.get("Entrypoint") or [], cfg.get("Cmd") or []

    pod_env: dict[str, str] = {}
    for name, value in env:
        pod_env[name] = expand(value, pod_env)
    argv = list(command) if command else list(entrypoint)
    if args:
        argv += args
    elif not command:
        argv += cmd
    if command or args:
        argv = [expand(a, pod_env) for a in argv]
    if not argv:
        raise Invalid(Cause("spec.containers[].command",
                            "no command: the image has no Entrypoint or Cmd; set command"))

    merged: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        name, _, value = item.partition("=")
        merged[name] = value
    merged.update(pod_env)  # dicts keep first-insertion order: overrides stay in place
    env_list = [f"{k}={v}" for k, v in merged.items()]
    return argv, env_list, working_dir or cfg.get("WorkingDir") or "/"


_REF = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(value: str, variables: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept as written,
    ``$$`` is a literal ``$``."""
    def sub(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2)
        return variables.get(name, m.group(0))
    return _REF.sub(sub, value)


def runtime_spec(*, args: list[str], env: list[str], cwd: str, rootfs: str, hostname: str,
                 cgroups_path: str, resources: dict | None, readonly_rootfs: bool = False,
                 annotations: dict | None = None,
                 join_namespaces: dict[str, str] | None = None) -> dict:
    """A complete OCI runtime config for one container.

    ``env`` gets PATH (the usual default) and HOSTNAME=``hostname`` when it lacks them, as Docker
    and Kubernetes do. ``resources`` is the OCI ``linux.resources`` object (not modified); a
    deny-all device rule is put first. ``join_namespaces`` maps a namespace type to a path to
    join (e.g. {"network": "/run/netns/pod"}) instead of creating a new one.
    """
    names = {e.partition("=")[0] for e in env}
    env = list(env)
    if "PATH" not in names:
        env.insert(0, DEFAULT_PATH)
    if "HOSTNAME" not in names:
        env.append(f"HOSTNAME={hostname}")

    res = copy.deepcopy(resources or {})
    res["devices"] = [{"allow": False, "access": "rwm"}] + res.get("devices", [])

    joins = join_namespaces or {}
    unknown = set(joins) - set(NAMESPACES)
    if unknown:
        raise Invalid(Cause("join_namespaces", f"unknown namespace types {sorted(unknown)}; "
                                               f"known: {NAMESPACES}"))
    namespaces = [{"type": t, **({"path": joins[t]} if t in joins else {})} for t in NAMESPACES]

    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": list(CAPABILITIES),
                "effective": list(CAPABILITIES),
                "permitted": list(CAPABILITIES),
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "hostname": hostname,
        "mounts": copy.deepcopy(MOUNTS),
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": res,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if annotations:
        spec["annotations"] = dict(annotations)
    return spec
