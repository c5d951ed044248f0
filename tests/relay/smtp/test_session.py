"""The SMTP dialogue against a real RelayServer on 127.0.0.1: commands, replies, what reaches the sink."""

from __future__ import annotations

import asyncio
import logging
import smtplib

import pytest

from smtp_relay.policy.verdict import Facts, Verdict
from smtp_relay.smtp.state import MAX_ERRORS
from tests.relay.smtp.conftest import RawClient, StartRelay

LOCAL = {"clients": {"allowedNetworks": ["127.0.0.0/8"]}}


def _smtplib_send(port: int, sender: str, rcpts: list[str], body: bytes) -> tuple[dict[str, tuple[int, bytes]], str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, features = client.ehlo("client.example")
        assert code == 250
        refused = client.sendmail(sender, rcpts, body)
        return refused, features.decode()


async def test_ehlo_advertises_extensions_and_no_auth_or_starttls_on_plain(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({**LOCAL, "policy": {"maxMessageSize": "1Mi"}})
    client: RawClient = await connect(relay.port())
    code, text = await client.cmd("EHLO client.example")
    assert code == 250
    lines = text.splitlines()
    assert lines[0] == "relay.test"
    for ext in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", f"SIZE {1024 * 1024}"):
        assert ext in lines
    assert not any(x.startswith(("AUTH", "STARTTLS")) for x in lines)


async def test_message_with_two_recipients_reaches_sink_with_received_header(start_relay: StartRelay) -> None:
    relay = await start_relay(LOCAL)
    body = b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nend\r\n"
    refused, _ = await asyncio.to_thread(
        _smtplib_send, relay.port(), "alice@example.org", ["bob@example.net", "carol@example.com"], body
    )
    assert refused == {}
    [(envelope, data)] = relay.sink.messages
    assert envelope.mail_from == "alice@example.org"
    assert envelope.rcpt_tos == ("bob@example.net", "carol@example.com")
    assert envelope.client_ip == "127.0.0.1"
    assert envelope.helo == "client.example"
    assert envelope.auth_user is None
    assert envelope.received_at > 0
    trace, _, rest = data.partition(b"\r\nSubject: hi")
    assert trace.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby relay.test (relayfleet) with ESMTP;")
    # smtplib dot-stuffs; the relay must unstuff exactly once
    assert rest == b"\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nend\r\n"


async def test_queue_id_in_reply_and_rset_noop_vrfy_help_quit(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    assert (await client.cmd("HELO client.example"))[0] == 250
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")
    assert (await client.cmd("VRFY someone@example.org"))[0] == 252
    code, text = await client.cmd("HELP")
    assert code == 214 and "MAIL" in text
    assert (await client.cmd("MAIL FROM:<a@example.org>"))[0] == 250
    assert (await client.cmd("RSET")) == (250, "2.0.0 Ok")
    assert (await client.cmd("RCPT TO:<b@example.org>"))[0] == 503  # RSET ended the transaction
    assert (await client.cmd("MAIL FROM:<a@example.org>"))[0] == 250
    assert (await client.cmd("RCPT TO:<b@example.org>"))[0] == 250
    assert (await client.cmd("DATA"))[0] == 354
    code, text = await client.cmd(b"Subject: x\r\n\r\nbody\r\n.")
    assert code == 250
    assert text == f"2.0.0 Ok: queued as {relay.sink.ids[0]}"
    assert (await client.cmd("QUIT"))[0] == 221
    assert await client.closed()


async def test_pipelined_transactions_in_one_write_are_two_messages(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    one = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    await client.send(one + b"first\r\n.\r\n" + one + b"second\r\n.\r\nNOOP\r\n")
    codes = [(await client.reply())[0] for _ in range(9)]
    assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 250]
    bodies = [
        data.split(b"\r\n\r\n", 1)[-1] if b"\r\n\r\n" in data else data.split(b";\r\n\t", 1)[1]
        for _, data in relay.sink.messages
    ]
    assert len(bodies) == 2
    assert bodies[0].endswith(b"\r\nfirst\r\n") and bodies[1].endswith(b"\r\nsecond\r\n")


async def test_sink_failure_gives_451_and_the_retry_succeeds(start_relay: StartRelay, connect, caplog) -> None:
    relay = await start_relay(LOCAL)
    relay.sink.fail = True
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    for _ in range(2):
        await client.cmd("MAIL FROM:<a@example.org>")
        await client.cmd("RCPT TO:<b@example.org>")
        await client.cmd("DATA")
        code, text = await client.cmd(b"hello\r\n.")
        if relay.sink.fail:
            assert (code, text) == (451, "4.3.0 Temporary failure, try again later")
            assert "sink failed" in caplog.text
            relay.sink.fail = False
        else:
            assert code == 250
    assert len(relay.sink.messages) == 1


async def test_exception_in_a_check_becomes_451_and_a_log_line(start_relay: StartRelay, connect, caplog) -> None:
    relay = await start_relay(LOCAL)

    def broken(facts: Facts) -> Verdict | None:
        raise RuntimeError("check exploded")

    relay.server.admission.rcpt.append(broken)
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    with caplog.at_level(logging.ERROR, logger="smtp_relay.smtp"):
        assert (await client.cmd("RCPT TO:<b@example.org>"))[0] == 451
    assert "check exploded" in caplog.text
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")  # the session survives


async def test_sequence_errors_and_unknown_verbs(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    assert (await client.cmd("MAIL FROM:<a@example.org>")) == (503, "5.5.1 Send HELO/EHLO first")
    assert (await client.cmd("FROB")) == (500, "5.5.1 Command not recognized")
    await client.cmd("EHLO c")
    assert (await client.cmd("RCPT TO:<b@example.org>")) == (503, "5.5.1 Need MAIL command")
    assert (await client.cmd("DATA")) == (503, "5.5.1 Need MAIL command")
    await client.cmd("MAIL FROM:<a@example.org>")
    assert (await client.cmd("MAIL FROM:<a@example.org>")) == (503, "5.5.1 Nested MAIL command")
    assert (await client.cmd("DATA")) == (503, "5.5.1 Need RCPT command")
    assert (await client.cmd("MAIL FROM:<a@b@c>"))[0] == 503  # nested is checked first
    await client.cmd("RSET")
    assert (await client.cmd("MAIL FROM:<a@b@c>"))[0] == 501
    assert (await client.cmd("MAIL FROM:<a@example.org> FOO=1"))[0] == 555
    assert (await client.cmd("MAIL FROM:<ü@example.org>")) == (553, "5.6.7 Non-ASCII address needs SMTPUTF8")
    assert (await client.cmd("MAIL FROM:<ü@example.org> SMTPUTF8"))[0] == 250
    assert relay.sample("smtp_relay_rejected_total", reason="sequence") == 6


async def test_too_many_errors_closes_the_connection(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    replies = [await client.cmd("XYZZY") for _ in range(MAX_ERRORS)]
    assert replies[-1][0] == 500
    assert (await client.reply())[0] == 421
    assert await client.closed()


async def test_max_recipients_452(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({**LOCAL, "policy": {"maxRecipients": 3}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    codes = [(await client.cmd(f"RCPT TO:<r{i}@example.org>"))[0] for i in range(4)]
    assert codes == [250, 250, 250, 452]
    assert (await client.cmd("RCPT TO:<r9@example.org>")) == (452, "4.5.3 Too many recipients")
    await client.cmd("DATA")
    assert (await client.cmd(b"x\r\n."))[0] == 250
    assert relay.sink.messages[0][0].rcpt_tos == ("r0@example.org", "r1@example.org", "r2@example.org")


async def test_sender_domains(start_relay: StartRelay, connect) -> None:
    relay = await start_relay({**LOCAL, "senders": {"allowedDomains": ["example.org"]}})
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    assert (await client.cmd("MAIL FROM:<a@evil.example>")) == (553, "5.7.1 Sender address domain not allowed")
    assert (await client.cmd("MAIL FROM:<a@sub.example.org>"))[0] == 553
    assert (await client.cmd("MAIL FROM:<a@EXAMPLE.org>"))[0] == 250
    await client.cmd("RSET")
    assert (await client.cmd("MAIL FROM:<>"))[0] == 250  # bounces have no domain and are allowed
    await client.cmd("RCPT TO:<b@example.net>")
    await client.cmd("DATA")
    assert (await client.cmd(b"bounce\r\n."))[0] == 250
    assert relay.sink.messages[0][0].mail_from == ""
    assert relay.sample("smtp_relay_rejected_total", reason="sender_domain") == 2


@pytest.mark.parametrize("extra", [0, 1])
async def test_routing_loop_over_30_received_headers(start_relay: StartRelay, connect, extra: int) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.org>")
    await client.cmd("DATA")
    headers = b"".join(b"Received: from hop%d by x; date\r\n" % i for i in range(30 + extra))
    code, text = await client.cmd(headers + b"Subject: loop\r\n\r\nreceived: in the body does not count\r\n.")
    if extra:
        assert (code, text) == (554, "5.4.6 Routing loop: too many Received headers")
        assert relay.sink.messages == []
    else:
        assert code == 250
        assert len(relay.sink.messages) == 1
