"""Smarthost delivery against real upstreams: TLS modes, AUTH, failover, pooling, per-recipient outcomes.

smtp-sink where a plain upstream will do; the in-process aiosmtpd upstream for TLS, AUTH, scripted
replies, SMTPUTF8 and counting connections (see conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from bench.peers.ports import closed_port
from bench.peers.smtp_sink import SmtpSink

from smtp_relay.config.resolved import Credentials
from smtp_relay.model.envelope import OutcomeKind
from tests.peers.dns import DnsServer, ZoneSpec
from tests.peers.smtp_sink import SinkFactory
from tests.relay.delivery.conftest import (
    SERVER_NAME,
    USERS,
    AiosmtpdUpstreamFactory,
    RecordingHandler,
    TlsFiles,
    body,
    deliverer,
    message,
    relay_config,
    smarthost,
)


async def test_plain_smarthost_delivers_and_counts(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    d = deliverer({"default": {"smarthosts": [smarthost(smtp_sink.port)]}}, tmp_path)
    try:
        data = body()
        outcomes = await d.deliver(
            message("a@sender.test", "b@example.test", "c@example.test"), data, ["b@example.test", "c@example.test"]
        )
        [pool] = d._pools.values()
        [conn] = pool.idle
        assert conn.smtp.get_transport_info("sslcontext") is None  # the message went in plain text
    finally:
        await d.close()
    assert {r: o.kind for r, o in outcomes.items()} == {
        "b@example.test": OutcomeKind.DELIVERED,
        "c@example.test": OutcomeKind.DELIVERED,
    }
    assert outcomes["b@example.test"].remote == f"127.0.0.1:{smtp_sink.port}"
    assert await smtp_sink.async_wait_for(1) == 1
    [received] = smtp_sink.messages()
    assert received.sender == "a@sender.test" and received.recipients == ("b@example.test", "c@example.test")
    assert received.data == data  # dot-stuffing undone by the server: byte-identical
    assert d._metrics is not None
    assert d._metrics.delivered.labels(route="smarthosts")._value.get() == 2


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_verified_with_ca_secret_and_auth(
    mode: str,
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory,
    delivery_tls: TlsFiles,
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
    tmp_path: Path,
) -> None:
    """The smarthost's name is resolved by the relay's resolver and checked against the certificate."""
    upstream = aiosmtpd_upstream_factory(tls=mode, auth=True)
    dns_server = dns_server_factory({"test": ["smarthost A 127.0.0.1", "wrong-name A 127.0.0.1"]})
    host = {
        "host": SERVER_NAME,
        "port": upstream.port,
        "tls": mode,
        "caSecret": "upstream-ca",
        "credentialsSecret": "upstream-login",
    }
    wrong_name = {**host, "host": "wrong-name.test"}  # resolves to the same server; certificate does not match
    d = deliverer(
        {"default": {"smarthosts": [wrong_name, host]}},
        tmp_path,
        cas={"upstream-ca": delivery_tls.ca_pem},
        credentials={"upstream-login": Credentials("relay", USERS["relay"])},
        nameservers=[dns_server.nameserver()],
    )
    try:
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
    finally:
        await d.close()
    assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED, outcomes
    [received] = upstream.received
    assert received.tls and received.auth_user == "relay"
    assert upstream.connections() == 1


async def test_insecure_auth_logs_in_over_plain_text_only_when_allowed(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, tmp_path: Path
) -> None:
    """A test network's plain smarthost with AUTH: the explicit allowInsecureAuth makes it work."""
    upstream = aiosmtpd_upstream_factory(tls="none", auth=True)
    d = deliverer(
        {"default": {"smarthosts": [smarthost(upstream.port, credentialsSecret="login", allowInsecureAuth=True)]}},
        tmp_path,
        credentials={"login": Credentials("relay", USERS["relay"])},
    )
    try:
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
    finally:
        await d.close()
    assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED, outcomes
    [received] = upstream.received
    assert not received.tls and received.auth_user == "relay"


async def test_tls_failures_are_temporary_and_fail_over(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory,
    smtp_sink_factory: SinkFactory,
    delivery_tls: TlsFiles,
    tmp_path: Path,
) -> None:
    """An untrusted certificate, a wrong password, and no STARTTLS offered: each defers, the next host takes it."""
    untrusted = aiosmtpd_upstream_factory(tls="implicit")
    bad_login = aiosmtpd_upstream_factory(tls="starttls", auth=True)
    no_tls = smtp_sink_factory()  # smtp-sink offers no STARTTLS
    good = aiosmtpd_upstream_factory(tls="starttls")
    d = deliverer(
        {
            "default": {
                "smarthosts": [
                    smarthost(untrusted.port, tls="implicit"),  # system CAs do not know our throwaway CA
                    smarthost(bad_login.port, tls="starttls", caSecret="ca", credentialsSecret="wrong"),
                    smarthost(no_tls.port, tls="starttls", verifyTLS=False),
                    smarthost(good.port, tls="starttls", verifyTLS=False),
                ]
            }
        },
        tmp_path,
        cas={"ca": delivery_tls.ca_pem},
        credentials={"wrong": Credentials("relay", "not-the-password")},
    )
    try:
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
        assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED
        assert outcomes["b@example.test"].remote == f"127.0.0.1:{good.port}"
        received = [len(untrusted.received), len(bad_login.received), no_tls.attempts(), len(good.received)]
        assert received == [0, 0, 0, 1]
        # with only the failing hosts, the result is temporary, never a bounce, and names the last failure
        d.update(
            relay_config(
                {
                    "default": {
                        "smarthosts": [
                            smarthost(bad_login.port, tls="starttls", caSecret="ca", credentialsSecret="wrong")
                        ]
                    }
                },
                cas={"ca": delivery_tls.ca_pem},
                credentials={"wrong": Credentials("relay", "not-the-password")},
            )
        )
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
    finally:
        await d.close()
    outcome = outcomes["b@example.test"]
    assert outcome.kind is OutcomeKind.TEMPORARY and outcome.code == 535
    assert "not-the-password" not in outcome.message


async def test_failover_from_closed_port(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    dead = closed_port()
    d = deliverer({"default": {"smarthosts": [smarthost(dead), smarthost(smtp_sink.port)]}}, tmp_path)
    try:
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
        assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED
        assert await smtp_sink.async_wait_for(1) == 1
        d.update(relay_config({"default": {"smarthosts": [smarthost(dead)]}}))
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
    finally:
        await d.close()
    assert outcomes["b@example.test"].kind is OutcomeKind.TEMPORARY
    assert outcomes["b@example.test"].code == 0 and f"127.0.0.1:{dead}" in outcomes["b@example.test"].message


async def test_pool_reuses_connections_and_survives_a_dropped_one(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, tmp_path: Path
) -> None:
    upstream = aiosmtpd_upstream_factory()
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port)]}}, tmp_path)
    try:
        for i in range(5):
            outcomes = await d.deliver(
                message("a@sender.test", f"r{i}@example.test"), body(f"m{i}"), [f"r{i}@example.test"]
            )
            assert outcomes[f"r{i}@example.test"].kind is OutcomeKind.DELIVERED
        assert len(upstream.received) == 5 and upstream.connections() == 1
        # the upstream drops the pooled connection: the next message reconnects instead of failing
        await upstream.drop_connections()
        outcomes = await d.deliver(message("a@sender.test", "late@example.test"), body("late"), ["late@example.test"])
        assert outcomes["late@example.test"].kind is OutcomeKind.DELIVERED
        assert upstream.connections() == 2
        # a config change of the smarthost's settings retires the pool; delivery opens a new one
        d.update(relay_config({"default": {"smarthosts": [smarthost(upstream.port, verifyTLS=False)]}}))
        assert not d._pools
        outcomes = await d.deliver(message("a@sender.test", "new@example.test"), body("new"), ["new@example.test"])
        assert outcomes["new@example.test"].kind is OutcomeKind.DELIVERED and upstream.connections() == 3
    finally:
        await d.close()


async def test_parallel_messages_share_a_bounded_pool(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, tmp_path: Path
) -> None:
    upstream = aiosmtpd_upstream_factory()
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port)]}}, tmp_path, pool_size=2)
    try:
        results = await asyncio.gather(
            *(d.deliver(message("a@s.test", f"r{i}@e.test"), body(f"m{i}"), [f"r{i}@e.test"]) for i in range(12))
        )
    finally:
        await d.close()
    assert all(o.kind is OutcomeKind.DELIVERED for r in results for o in r.values())
    assert len(upstream.received) == 12 and 1 <= upstream.connections() <= 2


async def test_per_recipient_outcomes(aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, tmp_path: Path) -> None:
    handler = RecordingHandler(
        rcpt_replies={"gone@example.test": "550 5.1.1 no such user", "busy@example.test": "451 4.2.0 mailbox busy"}
    )
    upstream = aiosmtpd_upstream_factory(handler=handler)
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port)]}}, tmp_path)
    rcpts = ["ok@example.test", "gone@example.test", "busy@example.test"]
    try:
        outcomes = await d.deliver(message("a@sender.test", *rcpts), body(), rcpts)
        assert (
            outcomes["ok@example.test"].kind,
            outcomes["gone@example.test"].kind,
            outcomes["busy@example.test"].kind,
        ) == (
            OutcomeKind.DELIVERED,
            OutcomeKind.PERMANENT,
            OutcomeKind.TEMPORARY,
        )
        assert (outcomes["gone@example.test"].code, outcomes["busy@example.test"].code) == (550, 451)
        assert "no such user" in outcomes["gone@example.test"].message
        assert upstream.received[0].rcpt_tos == ("ok@example.test",)
        # all refused: no DATA, and the connection stays usable (RSET) for the next message
        outcomes = await d.deliver(message("a@sender.test", "gone@example.test"), body(), ["gone@example.test"])
        assert outcomes["gone@example.test"].kind is OutcomeKind.PERMANENT
        outcomes = await d.deliver(message("a@sender.test", "ok@example.test"), body(), ["ok@example.test"])
        assert outcomes["ok@example.test"].kind is OutcomeKind.DELIVERED
        assert len(upstream.received) == 2 and upstream.connections() == 1
        # DATA refusals apply to every accepted recipient
        handler.data_reply = "554 5.6.0 content rejected"
        outcomes = await d.deliver(
            message("a@sender.test", "ok@example.test", "x@example.test"), body(), ["ok@example.test", "x@example.test"]
        )
        assert {o.kind for o in outcomes.values()} == {OutcomeKind.PERMANENT}
        assert {o.code for o in outcomes.values()} == {554}
        handler.data_reply = "451 4.3.0 try again later"
        outcomes = await d.deliver(message("a@sender.test", "ok@example.test"), body(), ["ok@example.test"])
        assert outcomes["ok@example.test"].kind is OutcomeKind.TEMPORARY and outcomes["ok@example.test"].code == 451
    finally:
        await d.close()


async def test_smtputf8_and_8bitmime_options(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, smtp_sink_factory: SinkFactory, tmp_path: Path
) -> None:
    utf8 = aiosmtpd_upstream_factory()
    d = deliverer({"default": {"smarthosts": [smarthost(utf8.port)]}}, tmp_path)
    data = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()
    try:
        outcomes = await d.deliver(
            message("j\u00f6rg@sender.test", "\u00fcser@example.test", smtputf8=True, body_8bit=True),
            data,
            ["\u00fcser@example.test"],
        )
        assert outcomes["\u00fcser@example.test"].kind is OutcomeKind.DELIVERED, outcomes
        [received] = utf8.received
        assert received.mail_from == "j\u00f6rg@sender.test" and received.data == data
        assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)
        # an upstream without SMTPUTF8 cannot take the message at all: permanent (RFC 6531), no transaction
        ascii_only = smtp_sink_factory()  # smtp-sink offers no SMTPUTF8
        d.update(relay_config({"default": {"smarthosts": [smarthost(ascii_only.port)]}}))
        outcomes = await d.deliver(message("j@sender.test", "u@example.test", smtputf8=True), data, ["u@example.test"])
    finally:
        await d.close()
    assert outcomes["u@example.test"].kind is OutcomeKind.PERMANENT and outcomes["u@example.test"].code == 553
    assert ascii_only.attempts() == 0


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_closing_a_tls_connection_frees_its_socket_at_once(
    mode: str, aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory, tmp_path: Path
) -> None:
    """Closing must not wait for the server's TLS close_notify: a loop that stops next would leak the socket."""
    upstream = aiosmtpd_upstream_factory(tls=mode)
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port, tls=mode, verifyTLS=False)]}}, tmp_path)
    try:
        outcomes = await d.deliver(message("a@sender.test", "b@example.test"), body(), ["b@example.test"])
        assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED
        [pool] = d._pools.values()
        [conn] = pool.idle
        sock = conn.smtp.get_transport_info("socket")
        assert conn.smtp.get_transport_info("sslcontext") is not None
        conn.smtp.close()  # as on a failure or a dead pooled connection: no QUIT, the server has not hung up
        await asyncio.sleep(0)  # one loop pass, no I/O wait: the transport's own close callback runs
        assert sock.fileno() == -1
    finally:
        await d.close()
