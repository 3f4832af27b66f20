"""Image references, normalized the way Docker does (a pure module).

``busybox`` → ``docker.io/library/busybox:latest``; ``me/app:v1`` → ``docker.io/me/app:v1``;
``127.0.0.1:5000/app`` → ``127.0.0.1:5000/app:latest``; ``app@sha256:<hex>`` pins a digest
(a tag given with a digest is kept for display; the digest wins). The first component is a
registry host when it has a ``.`` or a ``:`` or is ``localhost``, as in Docker's
``reference.ParseNormalizedNamed``. The canonical string (``Reference.name``) is what the node's
image store records as the image's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Cause, Invalid

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's distribution API answers
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    registry: str          # host[:port], e.g. docker.io or 127.0.0.1:5000
    repository: str        # e.g. library/busybox
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The canonical reference: registry/repository, then :tag and/or @digest."""
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def version(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry


def parse(text: str) -> Reference:
    """Parse and normalize ``text``; ``Invalid`` (field ``image``) says what is wrong."""
    def bad(why: str) -> Invalid:
        return Invalid(Cause("image", f'"{text}" is not a valid image reference: {why}'))

    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise bad(f'digest "{digest}" is not sha256:<64 lowercase hex>')
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise bad(f'tag "{tag}" must be letters, digits, "_", "." or "-" (at most 128)')
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _HOST.match(registry):
            raise bad(f'registry "{registry}" is not a host[:port]')
    else:
        registry, path = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if not path or not all(_COMPONENT.match(c) for c in path.split("/")):
        raise bad(f'repository "{path}" must be lowercase components '
                  "(letters, digits, separators . _ -) joined by /")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def normalize(text: str) -> str:
    """The canonical name of ``text``, or ``text`` itself when it does not parse (a name a
    layout was given by another tool, such as skopeo's bare ``latest``)."""
    try:
        return parse(text).name
    except Invalid:
        return text


def pulls_always_by_default(text: str) -> bool:
    """Kubernetes' default imagePullPolicy: Always for ``:latest`` (or no tag) without a
    digest, IfNotPresent otherwise."""
    try:
        ref = parse(text)
    except Invalid:
        return False
    return ref.digest is None and ref.tag == "latest"


def should_pull(policy: str | None, image: str, present: bool) -> bool:
    """Whether to ask the registry before running ``image``: ``Always`` pulls every start (the
    registry answers quickly when nothing changed), ``IfNotPresent`` only when the node lacks
    the image, ``Never`` never (a missing image is then an error).

    ``localhost/...`` (no port) names a node-local image — built or imported, as Podman's
    ``localhost/`` prefix — that no registry serves: it is never pulled, whatever the policy."""
    if _is_node_local(image):
        return False
    policy = policy or ("Always" if pulls_always_by_default(image) else "IfNotPresent")
    if policy == "Always":
        return True
    if policy == "IfNotPresent":
        return not present
    return False


def _is_node_local(text: str) -> bool:
    try:
        return parse(text).registry == "localhost"
    except Invalid:
        return True  # not a registry reference at all: only a local layout can have it
