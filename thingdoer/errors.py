"""The closed set of error kinds every layer raises.

Foreign exceptions (etcd, runc, the filesystem) are translated into one of these at the module
that talks to the outside system, with ``raise ... from err``. apid maps each kind to an HTTP
status and a Kubernetes ``Status`` reason in one table (``api/status.py``); the CLI prints
``str(err)`` as one line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    """One invalid field: ``field`` is a dotted path like ``spec.containers[0].image``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ThingdoerError(Exception):
    """Base of all thingdoer errors. ``reason`` is the Kubernetes ``Status.reason``."""

    reason = "InternalError"


class NotFound(ThingdoerError):
    reason = "NotFound"


class AlreadyExists(ThingdoerError):
    reason = "AlreadyExists"


class Conflict(ThingdoerError):
    """A compare-and-swap lost: the object changed since it was read."""

    reason = "Conflict"


class Unavailable(ThingdoerError):
    """A dependency (etcd, a node, runc) could not be reached or failed transiently."""

    reason = "ServiceUnavailable"


class Gone(ThingdoerError):
    """A watch asked for history etcd has compacted away: list again, then watch from there."""

    reason = "Expired"


class Invalid(ThingdoerError):
    """Input that can never be accepted as it is. Carries one ``Cause`` per bad field."""

    reason = "Invalid"

    def __init__(self, causes: list[Cause] | Cause | str, *, kind: str = "", name: str = ""):
        if isinstance(causes, str):
            causes = [Cause("", causes)]
        elif isinstance(causes, Cause):
            causes = [causes]
        self.causes = list(causes)
        self.kind = kind
        self.name = name
        detail = ", ".join(str(c) for c in self.causes)
        subject = f'{kind} "{name}" is invalid: ' if kind else ""
        super().__init__(subject + detail)


class BadRequest(ThingdoerError):
    """A request the server cannot parse at all (not JSON, wrong kind)."""

    reason = "BadRequest"
