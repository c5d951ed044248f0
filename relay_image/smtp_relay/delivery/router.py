"""Routing: which destination takes each recipient of a message.

Pure functions over the spec, so the routing table can be tested (and reasoned about) without any
I/O. Routes are checked in order and the first match wins; anything unmatched goes to the default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from smtp_relay.config.spec import Destination, Route, RoutingSpec
from smtp_relay.model.envelope import domain_of


def _matches(route: Route, sender_domain: str, recipient_domain: str) -> bool:
    """All given lists must match; an empty list does not constrain (so an empty match takes all)."""
    match = route.match
    if match.recipient_domains and recipient_domain not in match.recipient_domains:
        return False
    return not (match.sender_domains and sender_domain not in match.sender_domains)


def _route_index(routing: RoutingSpec, sender_domain: str, recipient: str) -> int:
    """Index of the first matching route, or -1 for the default (an index keeps grouping exact)."""
    recipient_domain = domain_of(recipient)
    for index, route in enumerate(routing.routes):
        if _matches(route, sender_domain, recipient_domain):
            return index
    return -1


def choose_route(routing: RoutingSpec, sender: str, recipient: str) -> Destination:
    """The destination of one recipient: the first matching route, else `routing.default`.

    Domains compare case-insensitively (the spec stores them lower-cased; addresses are lowered here).
    The null sender has no domain, so it never matches a route that lists sender domains.
    """
    index = _route_index(routing, domain_of(sender), recipient)
    return routing.default if index < 0 else routing.routes[index]


def group_by_route(routing: RoutingSpec, sender: str, recipients: Iterable[str]) -> list[tuple[Destination, list[str]]]:
    """Recipients grouped per destination, so each destination gets one transaction per message.

    Groups come in the order of their first recipient, recipients in their given order, so delivery
    and logs are deterministic.
    """
    sender_domain = domain_of(sender)
    groups: dict[int, list[str]] = {}
    for recipient in recipients:
        groups.setdefault(_route_index(routing, sender_domain, recipient), []).append(recipient)
    return [(routing.default if index < 0 else routing.routes[index], members) for index, members in groups.items()]


def route_label(destination: Destination) -> Literal["smarthosts", "mx", "capture"]:
    """The metrics label of a destination: its kind, never a host name (bounded cardinality)."""
    return destination.kind
