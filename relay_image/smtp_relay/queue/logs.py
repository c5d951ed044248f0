"""What the scheduler logs about an attempt: the reply of a failure, and to=/via lines of deliveries."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from smtp_relay.model.envelope import Outcome, StoredMessage


def describe(outcome: Outcome) -> str:
    where = f" ({outcome.remote})" if outcome.remote else ""
    return f"{outcome.code} {outcome.message}{where}".strip() if outcome.code else f"{outcome.message}{where}"


LOGGED_RECIPIENTS = 5


def delivery_summary(delivered: list[str], outcomes: Mapping[str, Outcome]) -> str:
    """`to=<a>,<b> via host:port: reply` (as Postfix logs to=, relay= and the reply), per remote."""
    by_remote: dict[tuple[str, str], list[str]] = {}
    for rcpt in delivered:
        outcome = outcomes[rcpt]
        by_remote.setdefault((outcome.remote or "-", outcome.message), []).append(rcpt)
    parts = []
    for (remote, reply), rcpts in by_remote.items():
        shown = ",".join(f"<{r}>" for r in rcpts[:LOGGED_RECIPIENTS])
        more = f" (+{len(rcpts) - LOGGED_RECIPIENTS} more)" if len(rcpts) > LOGGED_RECIPIENTS else ""
        parts.append(f"to={shown}{more} via {remote}: {reply[:200]}")
    return "; ".join(parts)


def log_postponed(log: logging.Logger, message: StoredMessage, deferred: int, shaped: int, now: float) -> None:
    """The line of a message that waits: deferred after temporary failures (info), or held by shaping (debug)."""
    if deferred:
        log.info(
            "message %s deferred for %d recipient(s), attempt %d, retry in %.0fs: %s",
            message.id,
            deferred,
            message.attempts,
            message.next_attempt - now,
            message.last_error,
        )
    if shaped:
        log.debug(
            "message %s held by traffic shaping for %d recipient(s) for %.3fs",
            message.id,
            shaped,
            message.next_attempt - now,
        )
