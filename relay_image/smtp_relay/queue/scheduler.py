"""The delivery scheduler: runs spooled messages through delivery, retries, and bounces.

One loop keeps at most `max_active` deliveries in flight; messages that failed temporarily wait
in a heap keyed by their next attempt, so deferred messages cost no timers. At most the spool's
`active_window` messages are in memory: the rest stay on disk in the spool's index and are loaded
when due (`window.py` decides how many, and which deferred ones make room), so memory does not
grow with the queue.
Progress is journaled through the spool after each attempt, so a restart never re-sends to a
recipient that was settled (except for the lazily synced tail: at-least-once). Bounces are ordinary
messages committed through the spool and submitted back here, so they are routed, retried and
durable like the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Mapping

from smtp_relay.config.spec import RetrySpec
from smtp_relay.config.units import parse_duration
from smtp_relay.model.envelope import Outcome, QueueState, StoredMessage
from smtp_relay.queue import window as win
from smtp_relay.queue.backoff import expired, next_delay
from smtp_relay.queue.bouncer import Bouncer
from smtp_relay.queue.logs import delivery_summary as _delivery_summary
from smtp_relay.queue.logs import describe as _describe
from smtp_relay.queue.logs import log_postponed
from smtp_relay.queue.outcomes import next_attempt, sort_outcomes
from smtp_relay.queue.spool.store import Spool
from smtp_relay.queue.stats import QueueStats, queue_stats, set_queue_gauges, with_on_disk
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

DeliverFn = Callable[[StoredMessage, bytes, list[str]], Awaitable[Mapping[str, Outcome]]]


_STATS_INTERVAL = 15.0
_MAX_SLEEP = 60.0
"""Re-check the clock at least this often, so a wall-clock step cannot stall the deferred queue."""


class Scheduler:
    """Delivers spooled messages with a bounded window, a retry schedule, maxAge and bounces."""

    def __init__(
        self,
        spool: Spool,
        deliver: DeliverFn,
        retry: RetrySpec,
        *,
        hostname: str,
        metrics: RelayMetrics | None = None,
        max_active: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        self._spool = spool
        self._deliver = deliver
        self._metrics = metrics
        self._bouncer = Bouncer(spool, self.submit, hostname=hostname, metrics=metrics)
        self._max_active = max_active
        self._clock = clock
        self._schedule: list[float] = []
        self._max_age = 0.0
        self.update_retry(retry)

        self._messages: dict[str, StoredMessage] = {}
        self._ready: deque[str] = deque()
        self._deferred: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._feed: asyncio.Task[None] | None = None
        """Loads due messages from disk into the window (one at a time)."""
        self._counting: asyncio.Task[None] | None = None
        """Counts what is on disk for the stats."""
        self._disk_check_at = -math.inf
        """Clock time before which the index is not asked for due messages again."""
        self._count_at = -math.inf
        """Clock time of the next count of what is on disk (for the stats)."""

    # ----------------------------------------------------------------- public API

    def submit(self, message: StoredMessage) -> None:
        """Take a freshly committed or recovered message; it goes out at once unless it is deferred."""
        if message.id in self._messages:
            return
        if not message.pending:
            self._spool.finish(message)
            return
        if len(self._messages) >= self._spool.active_window:
            self._spool.release(message)  # the window is full: it waits on disk, loaded once there is room
            self._disk_check_at = -math.inf
            self._wake.set()
            return
        self._take(message)

    def _take(self, message: StoredMessage) -> None:
        self._messages[message.id] = message
        if message.next_attempt <= self._clock():
            message.state = QueueState.ACTIVE
            self._ready.append(message.id)
        else:
            self._defer(message)
        self._wake.set()

    async def run(self) -> None:
        """Start due deliveries and sleep until the next is due; cancelling it cancels the deliveries."""
        if self._run_task is not None and not self._run_task.done():
            raise RuntimeError("the scheduler is already running")
        self._run_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        next_stats = loop.time()
        try:
            while True:
                self._promote_due()
                self._start_ready()
                self._feed_window()
                if loop.time() >= next_stats:
                    self.stats()
                    next_stats = loop.time() + _STATS_INTERVAL
                timeout = min(_MAX_SLEEP, max(0.0, next_stats - loop.time()))
                if self._deferred and len(self._active) < self._max_active:
                    timeout = min(timeout, max(0.0, self._deferred[0][0] - self._clock()))
                if self._spool.on_disk():  # a check already due waits for room: a finished attempt wakes the loop
                    later = [t - self._clock() for t in (self._disk_check_at, self._count_at) if t > self._clock()]
                    timeout = min([timeout, *later])
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            helpers = {t for t in (self._feed, self._counting) if t is not None}
            for task in helpers:
                task.cancel()
            if helpers:
                await asyncio.wait(helpers)
            await self._cancel_active()

    def update_retry(self, retry: RetrySpec) -> None:
        """Apply a new retry schedule and maxAge from the next failure on."""
        self._schedule = [parse_duration(step) for step in retry.schedule]
        self._max_age = parse_duration(retry.max_age)

    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109 - the contract: a shutdown budget
        """Retry deferred messages now and keep delivering until the queue is empty or `timeout`
        passes (or nothing can progress before it); return how many messages are left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        now = self._clock()
        for message in self._messages.values():
            if message.state is QueueState.DEFERRED:
                message.next_attempt = now
                message.state = QueueState.ACTIVE
                self._ready.append(message.id)
        if self._spool.on_disk():
            self._spool.make_due(now)
            await self._spool.flush()
            self._disk_check_at = -math.inf
        self._wake.set()
        own_runner = None
        if self._run_task is None or self._run_task.done():
            own_runner = asyncio.create_task(self.run(), name="scheduler-drain")
        try:
            while self._messages or self._spool.on_disk():
                left = deadline - loop.time()
                if left <= 0:
                    break
                if not self._active and not self._ready and (self._feed is None or self._feed.done()):
                    # Nothing runs: stop early if nothing (in memory or on disk) is due before the budget ends.
                    soonest = win.soonest_deferred(self._messages.values(), default=now)
                    on_disk = await self._spool.soonest_on_disk()
                    soonest = soonest if on_disk is None else min(soonest, on_disk)
                    if soonest - self._clock() >= left:
                        break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._changed.wait()
        finally:
            if own_runner is not None:
                own_runner.cancel()
                await asyncio.wait({own_runner})
        left_over = len(self._messages) + self._spool.on_disk()
        self.stats()
        log.info("drain finished: %d message(s) left", left_over)
        return left_over

    async def stop(self) -> None:
        """Stop the loop and cancel in-flight deliveries (they stay spooled). Idempotent."""
        task = self._run_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})
        await self._cancel_active()

    def take_idle(self, limit: int, skip: Container[str] = ()) -> list[StoredMessage]:
        """Up to `limit` messages of the window that no attempt holds, out of it (still in the spool): a drain
        hands them to a relay that stays; `submit` gives one back. Messages in `skip` stay."""
        idle = (m for i, m in self._messages.items() if i not in self._active and i not in skip)
        taken = list(itertools.islice(idle, max(0, limit)))
        for message in taken:
            del self._messages[message.id]
        return taken

    def stats(self) -> QueueStats:
        """Counts and oldest ages per state; also pushed into the queue gauges."""
        now = self._clock()
        stats = queue_stats(self._messages.values(), now)
        stats = with_on_disk(stats, self._spool.aggregate, self._spool.on_disk(), now)
        if self._metrics is not None:
            set_queue_gauges(self._metrics, stats)
        return stats

    # ----------------------------------------------------------------- internals

    def _feed_window(self) -> None:
        """Start loading due messages from disk when the window has room (or has deferred ones to let go)."""
        if not self._spool.on_disk():
            return
        now = self._clock()
        if now >= self._count_at and (self._counting is None or self._counting.done()):
            self._count_at = math.inf  # until the count below finishes
            self._counting = asyncio.create_task(self._count(now), name="scheduler-count")
        if (self._feed is not None and not self._feed.done()) or now < self._disk_check_at:
            return
        window, idle = self._spool.active_window, not self._ready and len(self._active) < self._max_active
        size = win.refill_size(window, len(self._messages), self._spool.on_disk(), idle=idle)
        evict = win.evict_count(window, len(self._messages), self._spool.on_disk()) if idle else 0
        if size or evict:
            self._feed = asyncio.create_task(self._refill(size, evict, now), name="scheduler-refill")

    async def _count(self, now: float) -> None:
        started = time.monotonic()
        try:
            await self._spool.refresh_aggregate(now)
        finally:
            self._count_at = self._clock() + win.aggregate_interval(time.monotonic() - started)
            self._wake.set()

    async def _refill(self, size: int, evict: int, now: float) -> None:
        try:
            if evict:
                soonest = await self._spool.soonest_on_disk()
                if soonest is not None and soonest <= now:
                    for message in win.pick_evictions(self._messages.values(), evict, now, set(self._active)):
                        self._messages.pop(message.id, None)
                        self._spool.release(message)
                        size += 1
            room = self._spool.active_window - len(self._messages)
            loaded = await self._spool.load_due(now, min(size, room))
            for message in loaded:
                if message.id not in self._messages:
                    self._take(message)
            if len(loaded) < min(size, room) or not loaded:
                soonest = await self._spool.soonest_on_disk()
                self._disk_check_at = min(math.inf if soonest is None else soonest, now + win.DISK_POLL)
        except Exception as exc:  # an index that cannot be read now: the window keeps what it has, retry later
            log.error("could not load queued messages from the spool index: %s", exc)
            self._disk_check_at = now + win.DISK_POLL
        finally:
            self._wake.set()
            self._changed.set()

    def _defer(self, message: StoredMessage) -> None:
        message.state = QueueState.DEFERRED
        heapq.heappush(self._deferred, (message.next_attempt, next(self._seq), message.id))
        if len(self._deferred) > 2 * len(self._messages) + 1000:
            # Entries of messages that left the window go stale: rebuild, so the heap stays within the window.
            waiting = (m for m in self._messages.values() if m.state is QueueState.DEFERRED)
            self._deferred = [(m.next_attempt, next(self._seq), m.id) for m in waiting]
            heapq.heapify(self._deferred)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._deferred and self._deferred[0][0] <= now:
            when, _, message_id = heapq.heappop(self._deferred)
            message = self._messages.get(message_id)
            # Stale heap entries (message finished, drained, or rescheduled) are skipped here.
            if message is None or message.state is not QueueState.DEFERRED or message.next_attempt != when:
                continue
            message.state = QueueState.ACTIVE
            self._ready.append(message_id)

    def _start_ready(self) -> None:
        while self._ready and len(self._active) < self._max_active:
            message_id = self._ready.popleft()
            message = self._messages.get(message_id)
            if message is None or message_id in self._active or message.state is not QueueState.ACTIVE:
                continue
            self._active[message_id] = asyncio.create_task(self._attempt(message), name=f"deliver-{message_id}")

    async def _cancel_active(self) -> None:
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _attempt(self, message: StoredMessage) -> None:
        try:
            await self._attempt_inner(message)
        except asyncio.CancelledError:
            if message.id in self._messages:
                message.state = QueueState.ACTIVE
                self._ready.appendleft(message.id)
            raise
        except Exception:
            # A bug here must not kill the loop or lose the message: retry it on the schedule.
            log.exception("internal error while handling message %s; will retry", message.id)
            if message.id in self._messages:
                message.next_attempt = self._clock() + next_delay(self._schedule, max(1, message.attempts))
                self._defer(message)
        finally:
            self._active.pop(message.id, None)
            self._wake.set()
            self._changed.set()

    async def _attempt_inner(self, message: StoredMessage) -> None:
        recipients = list(dict.fromkeys(r for r in message.envelope.rcpt_tos if r in message.pending))
        recipients += sorted(message.pending.difference(recipients))
        data = b""
        try:
            data = await self._spool.read(message)
        except OSError as exc:
            log.error("message %s: cannot read it from the spool: %s", message.id, exc)
            outcomes: Mapping[str, Outcome] = {
                r: Outcome.temporary(0, f"spool read failed: {exc.strerror or exc}") for r in recipients
            }
        else:
            outcomes = await self._call_deliver(message, data, recipients)
        now = self._clock()
        sorted_ = sort_outcomes(recipients, outcomes)
        settled, failures, temporary, shaped = sorted_.settled, sorted_.failures, sorted_.temporary, sorted_.shaped
        if sorted_.counts_as_attempt:
            message.attempts += 1
        if settled:
            log.info("message %s delivered %s", message.id, _delivery_summary(settled, outcomes))

        reason = ""
        if (temporary or shaped) and expired(message.envelope.received_at, now, self._max_age):
            reason = f"The message stayed in the queue for longer than {self._max_age:.0f} seconds (maxAge)."
            log.warning("message %s expired with %d recipient(s) pending", message.id, len(temporary) + len(shaped))
            failures.update(temporary)
            failures.update((r, Outcome.temporary(0, o.message, o.remote)) for r, o in shaped.items())
            temporary, shaped = {}, {}
        if failures:
            if await self._bouncer.bounce(message, data, failures, reason, now):
                settled.extend(failures)
            else:
                temporary.update(
                    (r, Outcome.temporary(o.code, f"bounce not queued yet: {o.message}", o.remote))
                    for r, o in failures.items()
                )

        message.pending.difference_update(settled)
        if not message.pending:
            self._finish(message, bounced=bool(failures), now=now)
            return
        deadline = message.envelope.received_at + self._max_age
        message.next_attempt = next_attempt(temporary, shaped, now, self._schedule, message.attempts, deadline)
        if temporary:
            first = next(iter(temporary.values()))
            message.last_error = _describe(first)
            if self._metrics is not None:
                self._metrics.deferred.inc(len(temporary))
        log_postponed(log, message, len(temporary), len(shaped), now)
        self._spool.record_attempt(message, settled)
        if self._spool.on_disk():  # others wait on disk: a deferred message gives them its place (Postfix's too)
            self._messages.pop(message.id, None)
            self._spool.release(message)
            return
        self._defer(message)

    async def _call_deliver(self, message: StoredMessage, data: bytes, recipients: list[str]) -> Mapping[str, Outcome]:
        try:
            return await self._deliver(message, data, list(recipients))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("message %s: delivery raised %s: %s; will retry", message.id, type(exc).__name__, exc)
            return {r: Outcome.temporary(0, f"delivery error: {type(exc).__name__}: {exc}") for r in recipients}

    def _finish(self, message: StoredMessage, *, bounced: bool, now: float) -> None:
        self._messages.pop(message.id, None)
        self._spool.finish(message)
        if self._metrics is not None and not bounced:
            self._metrics.delivery_latency.observe(max(0.0, now - message.envelope.received_at))
