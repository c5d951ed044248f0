"""Never an open relay, no SMTP smuggling, and bad input answered with the right 5xx."""

from __future__ import annotations

import base64
import ipaddress
import struct

import pytest

from tests.relay.smtp.conftest import RawClient, StartRelay, listeners

RECIPIENTS = [
    "victim@example.com",
    "victim@relay.test",  # our own hostname is not a local domain either
    '"quoted local"@example.net',
    '"user@evil"@example.org',
    "user%other@example.com",
    "@hop.example:victim@example.com",
    "@a.example,@b.example:victim@example.com",
    "victim@[192.0.2.1]",
    "victim@[127.0.0.1]",
    "victim@[IPv6:2001:db8::1]",
    "postmaster@localhost",
    "victim@example.com.",
]


@pytest.mark.parametrize("networks", [[], ["10.0.0.0/8", "2001:db8::/32"]])
async def test_unauthenticated_client_outside_networks_can_relay_nowhere(
    start_relay: StartRelay, connect, networks: list[str]
) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": networks}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO attacker.example")
    assert (await client.cmd("MAIL FROM:<spammer@example.org>"))[0] == 250
    for rcpt in RECIPIENTS:
        assert await client.cmd(f"RCPT TO:<{rcpt}>") == (554, "5.7.1 Relay access denied"), rcpt
    assert (await client.cmd("RCPT TO:victim@example.com"))[0] == 554  # without brackets
    assert (await client.cmd("DATA"))[0] == 503
    assert relay.sink.messages == []
    assert relay.sample("smtp_relay_rejected_total", reason="relay_denied") == len(RECIPIENTS) + 1


async def test_allowed_network_may_relay_any_domain(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO inside.example")
    await client.cmd("MAIL FROM:<app@example.org>")
    for rcpt in RECIPIENTS:
        assert (await client.cmd(f"RCPT TO:<{rcpt}>"))[0] == 250, rcpt


SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\n..\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
async def test_smuggling_never_makes_a_second_message(start_relay: StartRelay, connect, fake_end: bytes) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.org>")
    assert (await client.cmd("DATA"))[0] == 354
    smuggled = (
        b"Subject: outer\r\n\r\nouter body"
        + fake_end
        + b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
    )
    await client.send(smuggled)
    code, text = await client.reply()
    # Everything up to the only real CRLF.CRLF was one transaction, refused for its bare CR/LF or NUL.
    assert code == 550 and text.startswith("5.6.0"), text
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")  # nothing after it was taken as a command
    assert relay.sink.messages == []


async def test_bare_lf_and_cr_in_commands_are_refused(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.org>\r\n")
    assert await client.reply() == (500, "5.5.2 Bare CR or LF not allowed, use CRLF")
    assert (await client.reply())[0] == 503  # the refused MAIL started nothing, so the RCPT is out of sequence
    await client.send(b"NOOP\rMAIL FROM:<a@example.org>\r\n")
    assert (await client.reply())[0] == 500
    assert (await client.cmd("RCPT TO:<b@example.org>")) == (503, "5.5.1 Need MAIL command")
    assert relay.sample("smtp_relay_rejected_total", reason="bare_cr_lf") == 2


async def test_nul_and_long_lines_and_8bit_verbs(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    client: RawClient = await connect(relay.port())
    assert await client.cmd(b"EHLO c\x00evil") == (500, "5.5.2 NUL not allowed in commands")
    assert await client.cmd("NOOP " + "x" * 520) == (500, "5.5.6 Line too long")
    assert await client.cmd(b"NOOP " + b"y" * 300_000) == (500, "5.5.6 Line too long")  # beyond the stream limit
    assert await client.cmd("\u00e9HLO c") == (500, "5.5.2 Syntax error")
    assert (await client.cmd(""))[0] == 500
    await client.cmd("EHLO c")
    assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME"))[0] == 250
    assert (await client.cmd("RCPT TO:<" + "r" * 250 + "@example.org>")) == (501, "5.5.4 Address too long")
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")


async def test_auth_answers_are_checked_like_command_lines(start_relay: StartRelay, connect) -> None:
    """An over-long AUTH answer was a 451 internal error (aiosmtpd's readline), found by the SMTP fuzz test."""
    spec = {"listeners": listeners({"name": "smtp", "auth": "optional", "allowInsecureAuth": True})}
    relay = await start_relay(spec, users={"app": "pw"})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    answers = [
        (b"x" * 70_000, (500, "5.5.6 Line too long")),  # beyond the stream limit
        (b"QUJD" * 3100, (500, "5.5.6 Line too long")),  # beyond RFC 4954's 12288
        (b"AGFwcAB3cm9uZw==\rNOOP", (500, "5.5.2 Bare CR or LF not allowed, use CRLF")),
        (b"*", (501, "5.7.0 Authentication cancelled")),
        (b"not base64!", (501, "5.5.2 Cannot decode base64")),
    ]
    for answer, expected in answers:
        assert (await client.cmd("AUTH PLAIN"))[0] == 334
        assert await client.cmd(answer) == expected, answer[:20]
    assert relay.sample("smtp_relay_rejected_total", reason="internal_error") == 0
    assert (await client.cmd("AUTH LOGIN"))[0] == 334
    assert (await client.cmd(base64.b64encode(b"app")))[0] == 334
    assert await client.cmd(base64.b64encode(b"pw")) == (235, "2.7.0 Authentication successful")


async def test_size_declared_too_big_552_at_mail(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}, "policy": {"maxMessageSize": "10Ki"}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    assert await client.cmd("MAIL FROM:<a@example.org> SIZE=10241") == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
    )
    assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=10240"))[0] == 250


async def test_data_too_big_552_after_reading_to_the_end(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"]}, "policy": {"maxMessageSize": "10Ki"}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.org>")
    await client.cmd("DATA")
    big = b"".join(b"line %06d of a message that is far too large\r\n" % i for i in range(5000))
    code, text = await client.cmd(big + b".")
    assert (code, text) == (552, "5.3.4 Message size exceeds fixed maximum message size")
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")
    assert relay.sink.messages == []
    assert relay.sample("smtp_relay_rejected_total", reason="message_size") == 1


def _proxy_v2(src: str, dst: str, sport: int, dport: int) -> bytes:
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


@pytest.mark.parametrize(
    "header",
    [b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 25\r\n", _proxy_v2("203.0.113.7", "10.0.0.1", 40000, 25)],
    ids=["v1", "v2"],
)
async def test_proxy_protocol_address_is_the_policy_address(start_relay: StartRelay, connect, header: bytes) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["203.0.113.0/24"], "proxyProtocol": True}})
    client: RawClient = await connect(relay.port(), preamble=header)
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    assert (await client.cmd("RCPT TO:<b@example.com>"))[0] == 250
    await client.cmd("DATA")
    assert (await client.cmd(b"hi\r\n."))[0] == 250
    [(envelope, data)] = relay.sink.messages
    assert envelope.client_ip == "203.0.113.7"
    assert b"([203.0.113.7])" in data.split(b"\r\n\r\n")[0]

    # the real peer (127.0.0.1) is not what counts: a proxied outsider is refused
    outsider: RawClient = await connect(relay.port(), preamble=b"PROXY TCP4 198.51.100.9 10.0.0.1 40000 25\r\n")
    await outsider.cmd("EHLO c")
    await outsider.cmd("MAIL FROM:<a@example.org>")
    assert (await outsider.cmd("RCPT TO:<b@example.com>"))[0] == 554


async def test_proxy_protocol_missing_header_closes(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({"clients": {"allowedNetworks": ["127.0.0.0/8"], "proxyProtocol": True}})
    client: RawClient = await connect(relay.port(), preamble=b"EHLO not-a-proxy-header\r\n", greet=False)
    assert await client.closed()
    assert relay.sample("smtp_relay_rejected_total", reason="proxy_protocol") == 1
