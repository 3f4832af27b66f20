"""Pod phases and the transitions between them: one table, checked on every status write."""

from __future__ import annotations

PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN = "Pending", "Running", "Succeeded", "Failed", "Unknown"
TERMINAL = frozenset({SUCCEEDED, FAILED})

# from-phase → phases it may move to. A terminal phase is final: a pod that Succeeded never
# runs again, and a late report from a node cannot resurrect a pod the reaper declared lost.
_ALLOWED = {
    PENDING: {PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN},
    RUNNING: {RUNNING, SUCCEEDED, FAILED, UNKNOWN},
    UNKNOWN: {UNKNOWN, RUNNING, SUCCEEDED, FAILED},
    SUCCEEDED: {SUCCEEDED},
    FAILED: {FAILED},
}


def can_move(old: str, new: str) -> bool:
    return new in _ALLOWED.get(old, set())


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL
