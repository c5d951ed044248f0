"""Small helpers shared by the policy checks: client networks, a bounded TTL cache and SMTP-safe reply text."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

NetworkList = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(networks: Sequence[str]) -> NetworkList:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@functools.lru_cache(maxsize=8192)
def ip_in(client_ip: str, networks: NetworkList) -> bool:
    """Is the address in one of the networks? IPv4-mapped IPv6 counts as its IPv4 address.

    Cached: every transaction asks several times for the same few client addresses, and parsing an
    address costs more than the rest of a RCPT check.
    """
    try:
        addr = ipaddress.ip_address(client_ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


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
