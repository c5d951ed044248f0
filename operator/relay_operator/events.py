"""Kubernetes Events about an SmtpRelay, posted through kopf's poster (queued, sent in the background).

Used by the handlers; `relays.reconcile` sees only its `Recorder` protocol, so the controller runs
without kopf in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kopf


class KopfRecorder:
    """Warnings go out at once. Normal events are collected and posted by `flush`, one per reason
    (e.g. one "Created" naming all five children), so a reconcile costs one event request, not five.

    `kopf.event`, not `kopf.info`: the latter obeys `settings.posting.level`, which is WARNING here so
    that log lines do not become events, and would drop every Normal event.
    """

    def __init__(self, body: Any) -> None:
        self.body = body
        self._normal: dict[str, list[str]] = {}

    def info(self, reason: str, message: str) -> None:
        self._normal.setdefault(reason, []).append(message)

    def warn(self, reason: str, message: str) -> None:
        kopf.warn(self.body, reason=reason, message=message)

    def flush(self) -> None:
        for reason, messages in self._normal.items():
            kopf.event(self.body, type="Normal", reason=reason, message="; ".join(messages))
        self._normal.clear()


@contextmanager
def recorder(body: Any) -> Iterator[KopfRecorder]:
    """A recorder for `body` whose Normal events are posted on exit, also when the block raises
    (what was done before the error is still reported)."""
    events = KopfRecorder(body)
    try:
        yield events
    finally:
        events.flush()
