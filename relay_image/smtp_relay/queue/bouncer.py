"""Bouncing the failures of a delivery attempt: one DSN per attempt, committed through the spool.

A DSN is an ordinary message handed back to the scheduler, so it is routed, retried and durable
like the rest. Mail from the null sender (and bounces themselves) is never bounced, only counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from smtp_relay.model.envelope import Envelope, Outcome, OutcomeKind, StoredMessage
from smtp_relay.queue.bounce import build_dsn
from smtp_relay.queue.spool.store import Spool
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)


def _header_block(data: bytes) -> bytes:
    """The header section of a message (for the DSN): everything before the first empty line."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return data[: min(ends)] if ends else data[:65536]


class Bouncer:
    """Queues DSNs through `spool` and hands each one to `submit` (the scheduler's)."""

    def __init__(
        self,
        spool: Spool,
        submit: Callable[[StoredMessage], None],
        *,
        hostname: str,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self._spool = spool
        self._submit = submit
        self._hostname = hostname
        self._metrics = metrics

    async def bounce(
        self, message: StoredMessage, data: bytes, failures: Mapping[str, Outcome], reason: str, now: float
    ) -> bool:
        """Queue one DSN for this attempt's failures; False if it could not be made durable."""
        original = message.envelope
        labels = ["expired" if o.kind is OutcomeKind.TEMPORARY else "permanent" for o in failures.values()]
        if original.mail_from == "" or original.is_bounce:
            log.warning(
                "message %s from the null sender failed for %d recipient(s): dropped, never bounced",
                message.id,
                len(failures),
            )
            self._count_bounced(labels)
            return True
        dsn = build_dsn(
            original,
            _header_block(data),
            failures,
            reporting_mta=self._hostname,
            queue_id=message.id,
            now=now,
            reason=reason,
        )
        envelope = Envelope(
            mail_from="",
            rcpt_tos=(original.mail_from,),
            helo=self._hostname,
            received_at=now,
            is_bounce=True,
            smtputf8=not original.mail_from.isascii(),
        )
        try:
            stored = await self._spool.commit(envelope, dsn)
        except OSError as exc:
            log.error("message %s: could not queue the bounce (will retry): %s", message.id, exc)
            return False
        self._count_bounced(labels)
        log.info("message %s bounced for %d recipient(s): DSN %s queued", message.id, len(failures), stored.id)
        self._submit(stored)
        return True

    def _count_bounced(self, labels: list[str]) -> None:
        if self._metrics is not None:
            for label in labels:
                self._metrics.bounced.labels(reason=label).inc()
