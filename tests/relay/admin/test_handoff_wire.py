"""The hand-off's wire format: what a draining relay sends comes out as it went in, anything else is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smtp_relay.admin.handoff_wire import (
    HandoffError,
    HandoffTooLarge,
    decode,
    encode,
    parse_drain_body,
    pending_recipients,
)
from smtp_relay.model.envelope import Envelope, StoredMessage

NOW = 1_800_000_000.0
DATA = b"Received: by a\r\nSubject: x\r\n\r\nbody\r\n"


def _message() -> StoredMessage:
    envelope = Envelope(
        "app@example.com",
        ("a@example.net", "b@example.net", "c@example.net"),
        client_ip="10.0.0.7",
        helo="client.test",
        auth_user="app",
        smtputf8=True,
        received_at=NOW - 3600,
    )
    message = StoredMessage("0661B92EA9E74E", envelope, len(DATA), pending={"c@example.net", "a@example.net"})
    message.attempts, message.next_attempt, message.last_error = 4, NOW + 60, "451 4.3.0 try later"
    return message


def _meta(**changes: Any) -> bytes:
    meta = json.loads(encode(_message(), DATA, "relay-2:/spool/0661B92EA9E74E").split(b"\n", 1)[0])
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del meta[key]
    return json.dumps(meta).encode() + b"\n" + DATA


_DROP = object()


def test_a_message_round_trips_with_its_pending_recipients_arrival_and_progress() -> None:
    record, data = decode(encode(_message(), DATA, "relay-2:/spool/0661B92EA9E74E"), 10_000, NOW)
    assert data == DATA
    assert record.origin == "relay-2:/spool/0661B92EA9E74E"
    assert record.envelope.rcpt_tos == ("a@example.net", "c@example.net"), "settled ones stay behind, order kept"
    assert record.envelope.received_at == NOW - 3600
    assert (record.attempts, record.next_attempt, record.last_error) == (4, NOW + 60, "451 4.3.0 try later")
    env = record.envelope
    assert (env.mail_from, env.client_ip, env.helo, env.auth_user, env.smtputf8) == (
        "app@example.com",
        "10.0.0.7",
        "client.test",
        "app",
        True,
    )


def test_pending_recipients_keep_the_envelope_order() -> None:
    message = _message()
    message.pending = {"c@example.net", "b@example.net"}
    assert pending_recipients(message) == ["b@example.net", "c@example.net"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"no newline at all", "must start with one line of JSON metadata"),
        (b"{not json\n" + DATA, "the metadata line is not JSON"),
        (b"[1, 2]\n" + DATA, "the metadata must be a JSON object"),
        (_meta(extra=1), "unknown field(s): extra"),
        (_meta(origin=_DROP, sha256=_DROP), "missing field(s): origin, sha256"),
        (_meta(v=2), "v: unsupported hand-off version 2"),
        (_meta(attempts="4"), "attempts: wrong type str"),
        (_meta(attempts=True), "attempts: wrong type bool"),
        (_meta(attempts=-1), "attempts: must be between 0 and 1000000"),
        (_meta(rcpt_tos=[]), "rcpt_tos: at least one pending recipient is needed"),
        (_meta(rcpt_tos=["a@x", 3]), "rcpt_tos[1]: wrong type int"),
        (_meta(rcpt_tos=["a@x", "a@x"]), "rcpt_tos: a recipient is listed twice"),
        (_meta(rcpt_tos=["a@x\r\nRCPT TO:<b@y>"]), "rcpt_tos[0]: control characters are not allowed"),
        (_meta(rcpt_tos=["a b@x"]), "rcpt_tos[0]: spaces are not allowed"),
        (_meta(mail_from="x" * 999), "mail_from: longer than 998 characters"),
        (_meta(received_at=0), "received_at: the original arrival time is required"),
        (_meta(received_at=NOW + 3600), "received_at: 1800003600 is in the future"),
        (_meta(next_attempt=-5), "next_attempt: must be a finite, non-negative Unix time"),
        (_meta(origin=""), "origin: must not be empty"),
        (_meta(size=len(DATA) + 1), f"size: the metadata declares {len(DATA) + 1} byte(s) of data but the body"),
        (_meta(sha256="0" * 64), "sha256: the data does not match its checksum"),
    ],
)
def test_bad_bodies_are_refused_naming_the_problem(body: bytes, error: str) -> None:
    with pytest.raises(HandoffError) as refused:
        decode(body, 10_000, NOW)
    assert error in str(refused.value)
    assert not isinstance(refused.value, HandoffTooLarge)


def test_a_message_over_the_limit_is_too_large() -> None:
    with pytest.raises(HandoffTooLarge, match=f"size: {len(DATA)} bytes is more than this relay accepts"):
        decode(encode(_message(), DATA, "o/1"), len(DATA) - 1, NOW)
    assert decode(encode(_message(), DATA, "o/1"), len(DATA), NOW)[1] == DATA


def test_drain_bodies() -> None:
    assert parse_drain_body(b"") is None, "no body: a drain as before (deliver only)"
    assert parse_drain_body(b'{"peers": []}') == []
    body = b'{"peers": ["http://10.0.0.5:9025/", "http://10.0.0.5:9025", "http://[fd00::1]:9025"]}'
    assert parse_drain_body(body) == [
        "http://10.0.0.5:9025",
        "http://[fd00::1]:9025",
    ]
    for body, error in [
        (b"peers", "the drain body is not JSON"),
        (b'["http://a:1"]', "must be a JSON object"),
        (b'{"peer": []}', "unknown field(s): peer"),
        (b'{"peers": "http://a:1"}', "peers: must be a list"),
        (b'{"peers": [1]}', "peers[0]: wrong type int"),
        (b'{"peers": ["10.0.0.5:9025"]}', "is not an admin URL"),
        (b'{"peers": ["http://10.0.0.5"]}', "is not an admin URL"),
        (b'{"peers": ["http://10.0.0.5:9025/handoff"]}', "must name only scheme, host and port"),
        (b'{"peers": ["http://u:p@10.0.0.5:9025"]}', "must name only scheme, host and port"),
    ]:
        with pytest.raises(HandoffError) as refused:
            parse_drain_body(body)
        assert error in str(refused.value), (body, str(refused.value))
