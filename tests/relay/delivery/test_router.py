"""Routing picks the first matching route per recipient, groups recipients per destination, else default."""

from __future__ import annotations

from typing import Any

import pytest

from smtp_relay.config.manifest import parse_spec
from smtp_relay.config.spec import RoutingSpec
from smtp_relay.delivery.router import choose_route, group_by_route, route_label


def routing(raw: dict[str, Any]) -> RoutingSpec:
    return parse_spec({"routing": raw}).routing


TABLE = routing(
    {
        "default": {"smarthosts": [{"host": "default.test"}]},
        "routes": [
            {"match": {"recipientDomains": ["Internal.Test"]}, "capture": {"folder": "internal"}},
            {"match": {"senderDomains": ["billing.test"]}, "smarthosts": [{"host": "billing-relay.test"}]},
            {
                "match": {"recipientDomains": ["partner.test"], "senderDomains": ["sales.test"]},
                "mx": {"port": 2525},
            },
            {"match": {"recipientDomains": ["internal.test", "other.test"]}, "mx": {}},
        ],
    }
)


@pytest.mark.parametrize(
    ("sender", "recipient", "expected"),
    [
        ("x@any.test", "u@internal.test", "capture"),  # route 0 (domain lower-cased by the spec)
        ("x@any.test", "u@INTERNAL.TEST", "capture"),  # recipient domain compared case-insensitively
        ("x@billing.test", "u@internal.test", "capture"),  # first match wins over the sender route
        ("x@Billing.Test", "u@somewhere.test", "billing"),  # sender route, case-insensitive
        ("x@sales.test", "u@partner.test", "partner-mx"),  # both lists must match...
        ("x@other.test", "u@partner.test", "default"),  # ...a recipient match alone is not enough
        ("x@any.test", "u@other.test", "mx-25"),
        ("", "u@somewhere.test", "default"),  # the null sender matches no sender route
        ("x@any.test", "u@sub.internal.test", "default"),  # subdomains are not implied
    ],
)
def test_choose_route(sender: str, recipient: str, expected: str) -> None:
    destination = choose_route(TABLE, sender, recipient)
    names = {
        "capture": destination.capture is not None and destination.capture.folder == "internal",
        "billing": [h.host for h in destination.smarthosts or []] == ["billing-relay.test"],
        "partner-mx": destination.mx is not None and destination.mx.port == 2525,
        "mx-25": destination.mx is not None and destination.mx.port == 25,
        "default": destination is TABLE.default,
    }
    assert [name for name, hit in names.items() if hit] == [expected]


def test_empty_match_takes_everything_and_default_is_capture() -> None:
    table = routing({"routes": [{"match": {}, "mx": {}}]})
    assert route_label(choose_route(table, "", "a@b.test")) == "mx"
    assert route_label(choose_route(routing({}), "a@b.test", "c@d.test")) == "capture"


def test_group_by_route_is_stable_and_exact() -> None:
    recipients = ["a@other.test", "b@internal.test", "c@nowhere.test", "d@Internal.test", "e@other.test", "f@x.test"]
    groups = group_by_route(TABLE, "s@any.test", recipients)
    assert [(route_label(dest), members) for dest, members in groups] == [
        ("mx", ["a@other.test", "e@other.test"]),
        ("capture", ["b@internal.test", "d@Internal.test"]),
        ("smarthosts", ["c@nowhere.test", "f@x.test"]),
    ]
    assert groups[2][0] is TABLE.default
    # every recipient lands in exactly one group
    assert sorted(r for _, members in groups for r in members) == sorted(recipients)


def test_same_sender_route_groups_all_recipients() -> None:
    groups = group_by_route(TABLE, "s@billing.test", ["a@x.test", "b@y.test"])
    assert len(groups) == 1
    assert groups[0][0].smarthosts is not None and groups[0][0].smarthosts[0].host == "billing-relay.test"
    assert group_by_route(TABLE, "s@billing.test", []) == []
