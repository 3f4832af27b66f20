"""Object metadata shared by every resource, and the helpers that name and time objects."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, field_validator

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Model(BaseModel):
    """Base of every resource part: unknown fields are refused, as kubectl's strict validation expects."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    def dump(self) -> dict:
        """The Kubernetes JSON form: camelCase, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


def check_dns_label(value: str) -> str:
    """RFC 1123 label: what Kubernetes requires of pod, container and namespace names.

    This is also what keeps names from escaping paths: no ``/``, no ``..``.
    """
    if len(value) > 63:
        raise ValueError("must be no more than 63 characters")
    if not _DNS_LABEL.match(value):
        raise ValueError("a lowercase RFC 1123 label must consist of lower case alphanumeric "
                         "characters or '-', and must start and end with an alphanumeric "
                         "character (e.g. 'my-name', or '123-abc')")
    return value


def check_dns_subdomain(value: str) -> str:
    """RFC 1123 subdomain: what Kubernetes requires of node names (dots allowed)."""
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                         "characters, '-' or '.', and must start and end with an alphanumeric "
                         "character (e.g. 'example.com')")
    return value


def now() -> str:
    """The current time as Kubernetes writes it: RFC 3339, UTC, whole seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_uid() -> str:
    return str(uuid.uuid4())


class ObjectMeta(Model):
    name: str = ""
    generateName: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    deletionGracePeriodSeconds: int | None = None
    resourceVersion: str | None = None

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_dns_label(value)


class ListMeta(Model):
    resourceVersion: str = ""
