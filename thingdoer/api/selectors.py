"""``labelSelector`` and ``fieldSelector`` query parameters, parsed into predicates (pure)."""

from __future__ import annotations

import re
from typing import Callable

from ..errors import BadRequest

_TERM = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*))?\s*$")


def _terms(selector: str, what: str) -> list[tuple[str, str | None, str]]:
    terms = []
    for raw in filter(None, (t.strip() for t in selector.split(","))):
        match = _TERM.match(raw)
        if not match:
            raise BadRequest(f"unable to parse {what} {selector!r}: use key=value, key!=value or key")
        key, op, value = match.groups()
        terms.append((key, op, value))
    return terms


def _matches(terms, lookup: Callable[[str], str | None]) -> bool:
    for key, op, value in terms:
        actual = lookup(key)
        if op is None and actual is None:
            return False
        if op in ("=", "==") and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
    return True


def label_selector(selector: str | None) -> Callable[[object], bool]:
    terms = _terms(selector or "", "labelSelector")
    return lambda obj: _matches(terms, lambda k: (obj.metadata.labels or {}).get(k))


FIELDS = {
    "metadata.name": lambda o: o.metadata.name,
    "metadata.namespace": lambda o: o.metadata.namespace or "",
    "spec.nodeName": lambda o: getattr(o.spec, "nodeName", None) or "",
    "status.phase": lambda o: getattr(o.status, "phase", None) or "",
}


def field_selector(selector: str | None) -> Callable[[object], bool]:
    terms = _terms(selector or "", "fieldSelector")
    for key, op, _ in terms:
        if key not in FIELDS:
            raise BadRequest(f'"{key}" is not a known field selector: use one of {", ".join(FIELDS)}')
        if op is None:
            raise BadRequest(f'fieldSelector "{key}" needs a value: use {key}=VALUE or {key}!=VALUE')
    return lambda obj: _matches(terms, lambda k: FIELDS[k](obj))
