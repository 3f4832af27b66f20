"""Errors at the HTTP edge: each error kind maps to one HTTP code and a Kubernetes ``Status``."""

from __future__ import annotations

from ..errors import (AlreadyExists, BadRequest, Conflict, Gone, Invalid, NotFound,
                      ThingdoerError, Unavailable)

HTTP_CODE = {
    NotFound: 404, AlreadyExists: 409, Conflict: 409, Invalid: 422, Gone: 410,
    BadRequest: 400, Unavailable: 503,
}

ERROR_KIND = {v: k for k, v in HTTP_CODE.items() if k not in (Conflict,)}  # code → default kind


def status_body(err: ThingdoerError, *, kind: str = "", name: str = "") -> tuple[int, dict]:
    code = next((c for k, c in HTTP_CODE.items() if isinstance(err, k)), 500)
    details: dict = {}
    if name:
        details["name"] = name
    if kind:
        details["kind"] = kind
    if isinstance(err, Invalid):
        details["causes"] = [{"reason": _cause_reason(c.message), "message": c.message, "field": c.field}
                             for c in err.causes]
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": str(err), "reason": err.reason, "code": code}
    if details:
        body["details"] = details
    return code, body


def _cause_reason(message: str) -> str:
    """Kubernetes' cause types, from the message's opening words."""
    for prefix, reason in (("Required value", "FieldValueRequired"),
                           ("Duplicate value", "FieldValueDuplicate"),
                           ("Unsupported value", "FieldValueNotSupported")):
        if message.startswith(prefix):
            return reason
    return "FieldValueInvalid"


def error_from_status(code: int, body: dict | None, fallback: str) -> ThingdoerError:
    """The client side of ``status_body``: rebuild the error kind from an API answer."""
    message = (body or {}).get("message") or fallback
    reason = (body or {}).get("reason")
    if reason == "Conflict":
        return Conflict(message)
    kind = ERROR_KIND.get(code)
    if kind is Invalid:
        return _invalid_from(message)
    if kind is not None:
        return kind(message)
    if code in (502, 503, 504):
        return Unavailable(message)
    return ThingdoerError(message)


def _invalid_from(message: str) -> Invalid:
    err = Invalid([])
    err.args = (message,)
    return err
