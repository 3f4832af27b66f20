"""The restart policy: a pure function of (policy, exit status, restarts so far) → decision.

As Kubernetes: ``Always`` restarts every exit, ``OnFailure`` only non-zero ones, ``Never``
none. Restarts back off exponentially — 1 s, 2 s, 4 s … capped at 60 s (Kubernetes starts at
10 s and caps at 5 min; a small orchestrator's users watch their pods more closely).
"""

from __future__ import annotations

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def should_restart(policy: str, exit_code: int | None) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def backoff(restarts: int) -> float:
    """Seconds to wait after the exit before starting restart number ``restarts + 1``."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(restarts, 16))
