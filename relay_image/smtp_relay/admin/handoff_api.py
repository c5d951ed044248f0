"""Receiving a hand-off: `POST /handoff` takes one message from a draining relay and queues it here.

The message is committed to this relay's spool with its original arrival time, attempts, next attempt and last
error (`Spool.adopt`, fdatasync before the 200, as a 250 over SMTP), then scheduled like any other. The policy
chain does not run again: the message was accepted by the fleet already, and its headers are those the first
relay added. A relay that is starting or draining refuses (503), so mail never goes to a pod that leaves too.

A sender that lost the 200 (a timeout, a crash before it deleted its copy) sends the same message again: the ids
of origin taken over recently are remembered, and a repeat is answered 200 again without a second copy (counted
as a duplicate). That memory is bounded and not durable, so at-least-once stays the guarantee: after a restart of
this relay a repeat is queued twice, never lost.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from smtp_relay.admin.handoff_wire import HEADROOM_BYTES, MAX_META_BYTES, HandoffError, HandoffTooLarge, decode
from smtp_relay.admin.handoff_wire import HandoffRecord as HandoffRecord
from smtp_relay.queue.scheduler import Scheduler
from smtp_relay.queue.spool.store import Spool
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

SEEN_ORIGINS = 100_000
"""Ids of origin remembered for duplicate detection (about 100 bytes each)."""


class HandoffRefused(Exception):
    """This relay does not take hand-offs now (starting, draining); the sender keeps the message."""


class HandoffReceiver:
    """Commits handed-off messages to the spool and schedules them; remembers their origins."""

    def __init__(
        self,
        spool: Spool,
        scheduler: Scheduler,
        metrics: RelayMetrics,
        refusal: Callable[[], str],
        max_message_bytes: Callable[[], int],
    ) -> None:
        self._spool = spool
        self._scheduler = scheduler
        self._metrics = metrics
        self._refusal = refusal
        """Why hand-offs are refused now ("" when they are taken)."""
        self._max_message_bytes = max_message_bytes
        self._seen: OrderedDict[str, str] = OrderedDict()

    def max_data(self) -> int:
        """The largest message data taken: the config's maxMessageBytes plus the headers relays add."""
        return self._max_message_bytes() + HEADROOM_BYTES

    async def accept(self, record: HandoffRecord, data: bytes) -> tuple[str, bool]:
        """Queue one handed-off message; (queue id here, whether it was a duplicate)."""
        why = self._refusal()
        if why:
            raise HandoffRefused(why)
        known = self._seen.get(record.origin)
        if known is not None:
            self._metrics.handoff_duplicates.inc()
            log.info("hand-off of %s again: already queued here as %s (duplicate)", record.origin, known)
            return known, True
        message = await self._spool.adopt(
            record.envelope,
            data,
            attempts=record.attempts,
            next_attempt=record.next_attempt,
            last_error=record.last_error,
            origin=record.origin,
        )
        self._seen[record.origin] = message.id
        while len(self._seen) > SEEN_ORIGINS:
            self._seen.popitem(last=False)
        self._metrics.handoff_received.inc()
        log.info(
            "message %s taken over from %s: %d recipient(s), received %.0f s ago, %d attempt(s) so far",
            message.id,
            record.origin,
            len(record.envelope.rcpt_tos),
            max(0.0, time.time() - record.envelope.received_at),
            record.attempts,
        )
        self._scheduler.submit(message)
        return message.id, False


def add_handoff_routes(app: web.Application, receiver: HandoffReceiver) -> None:
    """POST /handoff (behind the admin token, as every route but health and metrics)."""

    async def handoff(request: web.Request) -> web.Response:
        limit = receiver.max_data() + MAX_META_BYTES + 1
        length = request.content_length
        if length is None:
            return web.Response(status=411, text="bad hand-off: Content-Length is required\n")
        if length > limit:
            return web.Response(status=413, text=f"bad hand-off: {length} bytes is more than this relay takes\n")
        try:
            record, data = decode(await request.content.readexactly(length), receiver.max_data(), time.time())
        except HandoffTooLarge as exc:
            return web.Response(status=413, text=f"bad hand-off: {exc}\n")
        except HandoffError as exc:
            log.warning("hand-off refused from %s: %s", request.remote, exc)
            return web.Response(status=400, text=f"bad hand-off: {exc}\n")
        try:
            queue_id, duplicate = await receiver.accept(record, data)
        except HandoffRefused as exc:
            return web.Response(status=503, text=f"hand-off refused: {exc}\n")
        except OSError as exc:  # not durable here: the sender keeps it
            log.error("hand-off of %s not stored: %s", record.origin, exc)
            return web.Response(status=503, text=f"hand-off refused: the spool write failed: {exc}\n")
        return web.json_response({"id": queue_id, "duplicate": duplicate})

    app.router.add_post("/handoff", handoff)
