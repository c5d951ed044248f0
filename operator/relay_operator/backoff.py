"""How long the operator waits before retrying what the API refused: pure, so the schedule is unit-tested.

A refusal that needs a human (a 422, a 403, a name conflict) is retried, because the human may fix it at any
moment, but with exponential backoff so a broken relay does not hammer the apiserver: 2, 4, 8 ... 300 s.
"""

from __future__ import annotations

FIRST_DELAY = 2.0
MAX_DELAY = 300.0


def retry_delay(retry: int) -> float:
    """Seconds before attempt `retry + 1` (kopf counts `retry` from 0 for the first run)."""
    return min(MAX_DELAY, FIRST_DELAY * float(2 ** min(max(retry, 0), 16)))
