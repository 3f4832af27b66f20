"""Turning pydantic's errors into Kubernetes-style field errors, and admission defaults.

Every message names the field as a path (``spec.containers[0].resources.limits.memory``), the
value that was refused, and what would be accepted — the format kubectl users know:
``spec.containers[0].resources.limits.memory: Invalid value: "lots": <why>``.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import Cause, Invalid
from .meta import Model, check_dns_label, new_uid, now

M = TypeVar("M", bound=BaseModel)

# A validator may name a sub-field itself ("memory: Invalid value: ..."); the path is joined on.
_SUBFIELD = re.compile(r"^([\w./\[\]-]+): ((?:Invalid|Duplicate|Required|Unsupported) value.*)$", re.S)


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith("function-"):
            path += f".{part}" if path else str(part)
    return path


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, default=str)[:80]


def _cause(error: dict) -> Cause:
    path = field_path(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return Cause(path, "Unsupported value: unknown field: remove it, thingdoer does not support it")
    if kind == "missing":
        return Cause(path, "Required value")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return Cause(path, f"Unsupported value: {_show(error['input'])}: supported values: {expected}")
    message = error["msg"].removeprefix("Value error, ")
    sub = _SUBFIELD.match(message)
    if sub:
        return Cause(f"{path}.{sub.group(1)}" if path else sub.group(1), sub.group(2))
    return Cause(path, f"Invalid value: {_show(error['input'])}: {message}")


def parse_object(model: type[M], data: Any, *, kind: str | None = None) -> M:
    """Validate ``data`` as ``model`` or raise ``Invalid`` naming every bad field."""
    if not isinstance(data, dict):
        raise Invalid(Cause("", "the object must be a JSON/YAML map"), kind=kind or model.__name__)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        name = (data.get("metadata") or {}).get("name", "") if isinstance(data.get("metadata"), dict) else ""
        raise Invalid([_cause(e) for e in err.errors()], kind=kind or model.__name__,
                      name=name) from None


def admit_pod(pod, namespace: str):
    """Fill in what the API server owns on create: namespace, uid, timestamp, defaults.

    ``namespace`` is the one in the URL; a different one in the body is refused like Kubernetes.
    """
    from .pod import PodStatus

    meta = pod.metadata
    if meta.namespace and meta.namespace != namespace:
        raise Invalid(Cause("metadata.namespace", f'Invalid value: "{meta.namespace}": does not '
                            f'match the namespace of the request ("{namespace}")'), kind="Pod",
                      name=meta.name)
    if not meta.name:
        if not meta.generateName:
            raise Invalid(Cause("metadata.name", "Required value: name or generateName is required"),
                          kind="Pod")
        meta.name = meta.generateName + new_uid()[:5]
        try:
            check_dns_label(meta.name)
        except ValueError as err:
            raise Invalid(Cause("metadata.generateName", f'Invalid value: "{meta.generateName}": {err}'),
                          kind="Pod") from None
    meta.namespace = namespace
    meta.uid = new_uid()
    meta.creationTimestamp = now()
    meta.resourceVersion = None
    meta.deletionTimestamp = None
    pod.status = PodStatus()
    return pod


def dump_json(obj: Model) -> bytes:
    return json.dumps(obj.dump(), separators=(",", ":")).encode()
