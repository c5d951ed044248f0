"""Sending a hand-off: a draining relay moves its queued messages to the relays that stay.

`POST /drain` with `{"peers": [admin URLs]}` starts it: a few workers take messages that no delivery attempt
holds (from the scheduler's window, then from disk), `POST /handoff` each to a peer (spread round robin), and
finish the local copy only after the peer's 200, which the peer sends after its fdatasync. A crash in between
leaves both copies: a duplicate, never a loss. A peer that refuses or cannot be reached rests a while (1 s,
doubling to 30 s); the message goes back to the scheduler, which goes on delivering due messages meanwhile, and
is handed off later. A message that every peer refuses as malformed (400, 413) is not offered again: it is
delivered from here. An undrain or a shutdown stops the hand-off; what it held stays queued here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiohttp

from smtp_relay.admin.auth import AdminToken
from smtp_relay.admin.handoff_wire import CONTENT_TYPE, encode
from smtp_relay.model.envelope import StoredMessage
from smtp_relay.queue.scheduler import Scheduler
from smtp_relay.queue.spool.store import Spool
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

REST_FIRST, REST_MAX = 1.0, 30.0
"""How long a peer that failed is left alone (doubling from the first to the maximum)."""
IDLE_POLL = 0.5
"""Nothing to hand off: look again this often (a delivery attempt may give a message back, a session commit)."""


class HandOff:
    """The hand-off of one relay process's spool; `start` (re)names the peers, `stop` ends it."""

    def __init__(
        self,
        spool: Spool,
        scheduler: Scheduler,
        metrics: RelayMetrics,
        token: AdminToken,
        *,
        origin: str,
        concurrency: int = 8,
        timeout: float = 60.0,
    ) -> None:
        self._spool = spool
        self._scheduler = scheduler
        self._metrics = metrics
        self._token = token
        self._origin = origin
        self._concurrency = max(1, concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.peers: list[str] = []
        self._rest: dict[str, tuple[float, float]] = {}
        """Peer: (monotonic time it may be tried again, the rest it got last)."""
        self._next_peer = 0
        self._held: deque[StoredMessage] = deque()
        """Taken from the scheduler or the disk and not yet being sent."""
        self._sending = 0
        self._refused: set[str] = set()
        """Ids every peer refused as malformed: delivered from here instead."""
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._claiming = asyncio.Lock()
        self.handed_off = 0
        self.failures = 0
        self.last_error = ""

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def in_flight(self) -> int:
        """Messages the hand-off holds (out of the scheduler's figures): still queued here until a peer has them."""
        return len(self._held) + self._sending

    def figures(self) -> dict[str, Any]:
        """For /drain and /queue: the peers, progress and the last failure."""
        return {
            "running": self.running,
            "peers": list(self.peers),
            "in_flight": self.in_flight(),
            "handed_off": self.handed_off,
            "failed": self.failures,
            "refused_messages": len(self._refused),
            "last_error": self.last_error,
        }

    def start(self, peers: Sequence[str]) -> None:
        """Hand off to `peers` from now on (an empty list stops handing off; the drain then only delivers)."""
        if list(peers) != self.peers:
            log.info("hand-off: peers %s", ", ".join(peers) or "none (delivering only)")
            self.peers = list(peers)
            self._rest = {p: r for p, r in self._rest.items() if p in self.peers}
        if not self.peers or self._tasks:
            return
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._tasks = [asyncio.create_task(self._work(), name=f"handoff-{i}") for i in range(self._concurrency)]

    async def stop(self) -> None:
        """End the hand-off: messages being sent are cancelled (they stay queued here), held ones go back."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._held:
            self._scheduler.submit(self._held.popleft())
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.peers = []

    async def _work(self) -> None:
        while True:
            message = await self._claim()
            if message is None:
                await asyncio.sleep(IDLE_POLL)
                continue
            self._sending += 1
            try:
                delivered_elsewhere = await self._send(message)
            except asyncio.CancelledError:
                self._scheduler.submit(message)  # still queued here: the scheduler has it back
                raise
            except Exception:  # a bug must not lose the message or stop the hand-off
                log.exception("hand-off of message %s failed", message.id)
                delivered_elsewhere = False
            finally:
                self._sending -= 1
            if not delivered_elsewhere:
                self._scheduler.submit(message)
                await self._pause_if_no_peer()

    async def _claim(self) -> StoredMessage | None:
        """The next message to hand off: from the window first, then from disk; None when none is free."""
        async with self._claiming:
            if not self._held:
                room = 2 * self._concurrency
                self._held.extend(self._scheduler.take_idle(room, self._refused))
                if len(self._held) < room and self._spool.on_disk():
                    for message in await self._load(room - len(self._held)):
                        if message.id in self._refused:
                            self._scheduler.submit(message)
                        else:
                            self._held.append(message)
            return self._held.popleft() if self._held else None

    async def _load(self, limit: int) -> list[StoredMessage]:
        """Messages from disk (any next attempt); if the hand-off is cancelled meanwhile, the scheduler gets them."""
        loading = asyncio.ensure_future(self._spool.load_due(math.inf, limit))
        try:
            return await asyncio.shield(loading)
        except asyncio.CancelledError:
            loading.add_done_callback(self._give_back)
            raise

    def _give_back(self, loading: asyncio.Future[list[StoredMessage]]) -> None:
        if not loading.cancelled() and loading.exception() is None:
            for message in loading.result():
                self._scheduler.submit(message)

    def _pick_peer(self, tried: set[str]) -> str | None:
        now = time.monotonic()
        for _ in range(len(self.peers)):
            peer = self.peers[self._next_peer % len(self.peers)]
            self._next_peer += 1
            if peer not in tried and self._rest.get(peer, (0.0, 0.0))[0] <= now:
                return peer
        return None

    async def _send(self, message: StoredMessage) -> bool:
        """Offer `message` to the peers until one takes it; True once one did (the local copy is finished)."""
        data = await self._spool.read(message)
        body = encode(message, data, f"{self._origin}/{message.id}")
        tried: set[str] = set()
        malformed = 0
        while (peer := self._pick_peer(tried)) is not None and self._session is not None:
            tried.add(peer)
            status, text = await self._post(self._session, peer, body)
            if status == 200:
                self._spool.finish(message)
                self._rest.pop(peer, None)
                self.handed_off += 1
                self._metrics.handed_off.inc()
                log.info("message %s handed off to %s (%s)", message.id, peer, text.strip()[:120])
                return True
            self.failures += 1
            self.last_error = f"{peer}: {status or 'unreachable'} {text.strip()[:200]}"
            self._metrics.handoff_failures.labels(reason="unreachable" if status == 0 else "refused").inc()
            log.warning("hand-off of message %s to %s failed: %s", message.id, peer, self.last_error)
            if status in (400, 413):
                malformed += 1  # this message, not the peer: the peer stays usable
                continue
            _, rest = self._rest.get(peer, (0.0, 0.0))
            rest = min(REST_MAX, rest * 2) if rest else REST_FIRST
            self._rest[peer] = (time.monotonic() + rest, rest)
        if malformed and malformed == len(tried) == len(self.peers):
            self._refused.add(message.id)
            log.warning("message %s refused by every peer: it is delivered from here", message.id)
        return False

    async def _post(self, session: aiohttp.ClientSession, peer: str, body: bytes) -> tuple[int, str]:
        """(status, text) of one POST /handoff; (0, why) when the peer cannot be reached."""
        headers = {**self._token.header(), "Content-Type": CONTENT_TYPE}
        try:
            async with session.post(f"{peer}/handoff", data=body, headers=headers) as reply:
                return reply.status, await reply.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 0, str(exc) or type(exc).__name__

    async def _pause_if_no_peer(self) -> None:
        """Every peer rests: wait until the first may be tried again (the scheduler delivers meanwhile)."""
        if not self.peers:
            return
        now = time.monotonic()
        soonest = min(self._rest.get(p, (0.0, 0.0))[0] for p in self.peers)
        if soonest > now:
            await asyncio.sleep(soonest - now)
