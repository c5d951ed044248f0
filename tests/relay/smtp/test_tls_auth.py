"""STARTTLS, implicit TLS and AUTH with real clients: Python's ssl/smtplib and swaks, trusting only the test CA."""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import ssl
from pathlib import Path

import bcrypt
import pytest

from tests.peers.swaks import Swaks
from tests.peers.tls import IssuedCert, ThrowawayCA
from tests.relay.smtp.conftest import RawClient, StartRelay, listeners

PASSWORD = "s3cret-Pa55"
HASHED = "correct horse battery"
USERS = {"app": PASSWORD, "hashed": bcrypt.hashpw(HASHED.encode(), bcrypt.gensalt(rounds=4)).decode()}


def _client_context(ca: ThrowawayCA) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_path))
    return context


def _submit(port: int, ca: ThrowawayCA, user: str | None, password: str | None, *, implicit: bool = False) -> str:
    """Send one message with smtplib (in a thread), returning the server's features after TLS."""
    context = _client_context(ca)
    client: smtplib.SMTP
    if implicit:
        client = smtplib.SMTP_SSL("localhost", port, context=context, timeout=10)
    else:
        client = smtplib.SMTP("localhost", port, timeout=10)
    with client:
        client.ehlo("client.example")
        if not implicit:
            assert "starttls" in client.esmtp_features and "auth" not in client.esmtp_features
            client.starttls(context=context)
            client.ehlo("client.example")
        features = " ".join(f"{k}={v}" for k, v in client.esmtp_features.items())
        if user is not None and password is not None:
            client.login(user, password)
        client.sendmail("app@example.org", ["someone@example.com"], b"Subject: tls\r\n\r\nhello\r\n")
    return features


@pytest.fixture
def tls_spec() -> dict[str, object]:
    return {
        "listeners": listeners(
            {"name": "smtp", "tls": "starttls", "auth": "optional"},
            {"name": "submission", "tls": "starttls", "requireTLS": True, "auth": "required"},
            {"name": "smtps", "tls": "implicit", "auth": "required"},
            {"name": "plainauth", "auth": "optional", "allowInsecureAuth": True},
        ),
    }


async def test_starttls_then_auth_plain_relays(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, test_ca: ThrowawayCA
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    features = await asyncio.to_thread(_submit, relay.port("smtp"), test_ca, "app", PASSWORD)
    assert "auth= PLAIN LOGIN" in features and "starttls" not in features
    [(envelope, data)] = relay.sink.messages
    assert envelope.auth_user == "app"
    assert b"with ESMTPSA;" in data.split(b"\r\n\r\n")[0]


async def test_implicit_tls_with_python_ssl(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, test_ca: ThrowawayCA
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    await asyncio.to_thread(_submit, relay.port("smtps"), test_ca, "hashed", HASHED, implicit=True)
    assert [e.auth_user for e, _ in relay.sink.messages] == ["hashed"]


async def test_require_tls_and_auth_required(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, test_ca: ThrowawayCA, connect
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    client: RawClient = await connect(relay.port("submission"))
    _, text = await client.cmd("EHLO c")
    assert "STARTTLS" in text.splitlines() and not any(x.startswith("AUTH") for x in text.splitlines())
    assert await client.cmd("MAIL FROM:<app@example.org>") == (530, "5.7.0 Must issue a STARTTLS command first")
    assert (await client.cmd("AUTH PLAIN " + base64.b64encode(b"\0app\0" + PASSWORD.encode()).decode()))[0] == 538
    assert relay.sample("smtp_relay_rejected_total", reason="tls_required") == 2

    def after_tls_without_login() -> tuple[int, bytes]:
        with smtplib.SMTP("localhost", relay.port("submission"), timeout=10) as smtp:
            smtp.starttls(context=_client_context(test_ca))
            smtp.ehlo("c")
            return smtp.mail("app@example.org")

    assert await asyncio.to_thread(after_tls_without_login) == (530, b"5.7.0 Authentication required")


async def test_wrong_passwords_then_421_and_no_secrets_in_logs(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, connect, caplog
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    client: RawClient = await connect(relay.port("plainauth"))
    _, text = await client.cmd("EHLO c")
    assert "AUTH PLAIN LOGIN" in text.splitlines()
    caplog.set_level(logging.DEBUG)
    secrets = ["wrong-one", "wrong-two", "wrong-three"]
    plain = base64.b64encode(b"\0app\0" + secrets[0].encode()).decode()
    assert await client.cmd("AUTH PLAIN " + plain) == (535, "5.7.8 Authentication credentials invalid")
    assert (await client.cmd("AUTH LOGIN"))[0] == 334
    assert (await client.cmd(base64.b64encode(b"app").decode()))[0] == 334
    assert (await client.cmd(base64.b64encode(secrets[1].encode()).decode()))[0] == 535
    assert (await client.cmd("AUTH PLAIN"))[0] == 334
    assert (await client.cmd(base64.b64encode(b"\0nobody\0" + secrets[2].encode()).decode()))[0] == 535
    assert (await client.reply())[0] == 421
    assert await client.closed()
    assert relay.sample("smtp_relay_rejected_total", reason="auth_failed") == 3
    logged = caplog.text
    for secret in [*secrets, plain, PASSWORD]:
        assert secret not in logged
        assert base64.b64encode(secret.encode()).decode() not in logged


async def test_auth_not_offered_without_tls_and_not_enabled(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, connect
) -> None:
    relay = await start_relay({**tls_spec, "clients": {"allowedNetworks": []}}, cert=server_cert, users=USERS)
    client: RawClient = await connect(relay.port("smtp"))
    await client.cmd("EHLO c")
    assert await client.cmd("AUTH LOGIN") == (538, "5.7.11 Encryption required for requested authentication mechanism")
    bare = await start_relay({}, sink=None)
    other: RawClient = await connect(bare.port())
    await other.cmd("EHLO c")
    assert await other.cmd("AUTH LOGIN") == (503, "5.5.1 Authentication not enabled")


@pytest.mark.peers
async def test_swaks_starttls_verify_auth_login_bcrypt(
    start_relay: StartRelay,
    tls_spec: dict[str, object],
    server_cert: IssuedCert,
    test_ca: ThrowawayCA,
    swaks: Swaks,
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    result = await swaks(
        relay.port("submission"),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(test_ca.ca_path),
        "--auth",
        "LOGIN",
        "--auth-user",
        "hashed",
        "--auth-password",
        HASHED,
        "--from",
        "app@example.org",
        "--to",
        "x@example.com",
        "--ehlo",
        "swaks.example",
    )
    assert result.code == 0, result.transcript
    assert "250 2.0.0 Ok: queued as" in result.transcript
    [(envelope, _)] = relay.sink.messages
    assert (envelope.auth_user, envelope.helo) == ("hashed", "swaks.example")


@pytest.mark.peers
async def test_swaks_implicit_tls_auth_plain(
    start_relay: StartRelay,
    tls_spec: dict[str, object],
    server_cert: IssuedCert,
    test_ca: ThrowawayCA,
    swaks: Swaks,
    tmp_path: Path,
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    result = await swaks(
        relay.port("smtps"),
        "--tlsc",
        "--tls-verify",
        "--tls-ca-path",
        str(test_ca.ca_path),
        "--auth",
        "PLAIN",
        "--auth-user",
        "app",
        "--auth-password",
        PASSWORD,
        "--from",
        "app@example.org",
        "--to",
        "x@example.com",
    )
    assert result.code == 0, result.transcript
    assert len(relay.sink.messages) == 1
    stranger = ThrowawayCA.create(tmp_path / "other-ca")  # verification is real: another CA is refused
    untrusted = await swaks(
        relay.port("smtps"),
        "--tlsc",
        "--tls-verify",
        "--tls-ca-path",
        str(stranger.ca_path),
        "--from",
        "app@example.org",
        "--to",
        "x@example.com",
    )
    assert untrusted.code != 0 and len(relay.sink.messages) == 1
    bad = await swaks(
        relay.port("smtps"),
        "--tlsc",
        "--auth",
        "PLAIN",
        "--auth-user",
        "app",
        "--auth-password",
        "nope",
        "--from",
        "app@example.org",
        "--to",
        "x@example.com",
    )
    assert bad.code == 28 and "535 5.7.8" in bad.transcript  # 28: AUTH failed


@pytest.mark.peers
async def test_swaks_plain_listener_with_insecure_auth_and_open_relay_refusal(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, swaks: Swaks
) -> None:
    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)
    result = await swaks(
        relay.port("plainauth"),
        "--auth",
        "PLAIN",
        "--auth-user",
        "app",
        "--auth-password",
        PASSWORD,
        "--from",
        "a@example.org",
        "--to",
        "x@example.com",
    )
    assert result.code == 0, result.transcript
    refused = await swaks(relay.port("plainauth"), "--from", "a@example.org", "--to", "x@example.com")
    assert refused.code == 24 and "554 5.7.1 Relay access denied" in refused.transcript  # 24: RCPT refused
    assert len(relay.sink.messages) == 1


async def test_certificate_reload_applies_to_new_sessions(
    start_relay: StartRelay, tls_spec: dict[str, object], server_cert: IssuedCert, test_ca: ThrowawayCA
) -> None:
    from tests.relay.smtp.conftest import make_config

    relay = await start_relay(tls_spec, cert=server_cert, users=USERS)

    def serial(port: int, implicit: bool) -> int:
        context = _client_context(test_ca)
        if implicit:
            with smtplib.SMTP_SSL("localhost", port, context=context, timeout=10) as smtp:
                der = smtp.sock.getpeercert(binary_form=True)
        else:
            with smtplib.SMTP("localhost", port, timeout=10) as smtp:
                smtp.starttls(context=context)
                der = smtp.sock.getpeercert(binary_form=True)
        from cryptography import x509

        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    assert await asyncio.to_thread(serial, relay.port("smtps"), True) == server_cert.serial
    renewed = test_ca.issue(("localhost", "127.0.0.1"))
    relay.server.update(make_config(tls_spec, cert=renewed, users=USERS))
    assert await asyncio.to_thread(serial, relay.port("smtps"), True) == renewed.serial
    assert await asyncio.to_thread(serial, relay.port("smtp"), False) == renewed.serial
