"""DNSBL query names (RFC 5782) and the verdict of a listing, with plain values (lookups: test_dnsbl_recipients)."""

from __future__ import annotations

import pytest

from smtp_relay.policy.dnsbl import Listing, dnsbl_verdict, query_name
from smtp_relay.policy.verdict import Action


def test_query_name_reverses_ipv4_octets() -> None:
    assert query_name("192.0.2.99", "bl.example.") == "99.2.0.192.bl.example."


def test_query_name_reverses_ipv6_nibbles() -> None:
    # RFC 5782 2.4's example
    assert query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example."
    )


def test_query_name_of_ipv4_mapped_ipv6_is_the_ipv4_name() -> None:
    assert query_name("::ffff:127.0.0.2", "bl.test") == "2.0.0.127.bl.test."


@pytest.mark.parametrize("address", ["", "unix:/tmp/sock", "300.1.1.1"])
def test_no_query_name_for_what_is_not_an_address(address: str) -> None:
    assert query_name(address, "bl.test") is None


def test_a_listing_is_rejected_naming_zone_and_reason() -> None:
    listings = [Listing("bl.test", "127.0.0.2", "see\r\nhttp://bl.test/?x"), Listing("b2.test", "127.0.0.3", "")]
    verdict = dnsbl_verdict(listings, "reject")
    assert verdict is not None
    assert verdict.reply == "554 5.7.1 Client host rejected: listed in bl.test: see http://bl.test/?x"


def test_a_listing_without_text_names_the_code_and_can_be_tagged() -> None:
    verdict = dnsbl_verdict([Listing("bl.test", "127.0.0.4", "")], "tag")
    assert verdict is not None
    assert (verdict.action, verdict.reason) == (Action.TAG, "dnsbl")
    assert verdict.text == "listed in bl.test: returned 127.0.0.4"


def test_no_listing_no_verdict() -> None:
    assert dnsbl_verdict([], "reject") is None
