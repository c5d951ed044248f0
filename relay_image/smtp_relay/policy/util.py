"""Small helpers shared by the policy checks: a bounded TTL cache and SMTP-safe reply text."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded cache whose entries expire: remembers per-client and per-domain answers briefly.

    Bounded (least recently stored first out) so a flood of distinct clients or domains cannot grow
    memory; the clock is injected so tests run in virtual time.
    """

    def __init__(self, ttl: float, max_items: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._items[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._clock() + (self.ttl if ttl is None else ttl), value)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def reply_text(text: str, limit: int = 300) -> str:
    """One line of printable ASCII: text that came from DNS or a scanner cannot break or inject SMTP replies."""
    return " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())[:limit]
