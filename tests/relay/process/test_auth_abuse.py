"""Password guessing against the relay process: the throttle cannot be bypassed and timing reveals no usernames.

Each client is its own loopback address (127.0.0.0/8), so the throttle's per-address state of one test
case never leaks into another. What the relay did is read from its /metrics: how many AUTH attempts
failed a real check (`rejected_total{reason="auth_failed"}`) and how many password checks it ran, by
kind (`auth_password_checks_total`).
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import bcrypt
import pytest
from bench.peers.ports import free_port

from tests.harness.raw_smtp import command, raw_client, read_reply
from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.peers

ROUNDS = 10
"""bcrypt cost of the test users: slow enough (tens of ms) that parallel attempts overlap their checks."""
PASSWORDS = {"alice": "alice-owns-this", "bob": "bob-S3cret", "carol": "carol-plain"}
HASHED = {"alice", "bob"}


def _users_secret(*, plaintext_only: bool = False) -> dict[str, Any]:
    data = {
        name: password
        if plaintext_only or name not in HASHED
        else bcrypt.hashpw(password.encode(), bcrypt.gensalt(ROUNDS)).decode()
        for name, password in PASSWORDS.items()
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"}, "stringData": data}


def _relay(relay_factory: Any, *, plaintext_only: bool = False) -> tuple[RelayProcess, int]:
    port = free_port()
    spec = {
        # plain text AUTH (test only) keeps TLS out of the way; 127.0.0.0/8 is outside allowedNetworks
        "listeners": [{"name": "submit", "port": port, "auth": "optional", "allowInsecureAuth": True}],
        "clients": {"allowedNetworks": ["10.0.0.0/8"], "users": {"secretName": "users"}},
        "routing": {"default": {"capture": {}}},
    }
    return relay_factory(spec, _users_secret(plaintext_only=plaintext_only)), port


def _plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())


def _login(port: int, source: str, user: str, password: str) -> bytes:
    """One AUTH PLAIN on a new connection; the reply's first line."""
    with raw_client(port, source) as sock:
        read_reply(sock)
        command(sock, b"EHLO guesser.test")
        return command(sock, _plain(user, password)).split(b"\r\n")[0]


def _parallel_logins(port: int, source: str, user: str, password: str, count: int) -> list[int]:
    """`count` sessions that all send their AUTH at once (after every one has its EHLO answered)."""
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(raw_client(port, source)) for _ in range(count)]
        for sock in sessions:
            read_reply(sock)
            command(sock, b"EHLO guesser.test")
        for sock in sessions:
            sock.sendall(_plain(user, password) + b"\r\n")
        return [int(read_reply(sock)[:3]) for sock in sessions]


def _checks(relay: RelayProcess) -> tuple[float, float]:
    """(password checks that failed, bcrypt verifications) so far."""
    return (
        relay.metric("smtp_relay_rejected_total", reason="auth_failed"),
        relay.metric("smtp_relay_auth_password_checks_total", kind="bcrypt"),
    )


def test_parallel_guesses_are_refused_before_their_password_is_checked(relay_factory: Any) -> None:
    relay, port = _relay(relay_factory)
    replies = _parallel_logins(port, "127.0.1.1", "bob", "guess", 30)
    assert sorted(replies) == [454] * 21 + [535] * 9  # the 10th failure blocks the address
    assert _checks(relay) == (10, 10)  # 20 attempts refused before their check: they cost no bcrypt
    assert _login(port, "127.0.1.1", "alice", PASSWORDS["alice"]).startswith(b"454 4.7.0")  # cooling down
    assert _checks(relay) == (10, 10)
    assert _login(port, "127.0.1.2", "bob", PASSWORDS["bob"]) == b"235 2.7.0 Authentication successful"


def test_a_login_to_an_owned_account_does_not_reset_guesses_at_another(relay_factory: Any) -> None:
    """The bypass: guess bob's password, log in as alice (the attacker's own account) in between, repeat."""
    relay, port = _relay(relay_factory)
    attacker = "127.0.2.1"
    assert sorted(_parallel_logins(port, attacker, "bob", "guess", 9)) == [535] * 9
    assert _login(port, attacker, "alice", PASSWORDS["alice"]) == b"235 2.7.0 Authentication successful"
    # alice's success forgets alice's failures (none), not the 9 guesses at bob: the 10th blocks the address
    with raw_client(port, attacker) as tenth:
        read_reply(tenth)
        command(tenth, b"EHLO guesser.test")
        tenth.sendall(_plain("bob", "guess-10") + b"\r\n")  # its reply comes after the tarpit: not waited for

        def the_tenth_guess_was_checked() -> bool:
            return _checks(relay)[0] == 10

        wait_for(the_tenth_guess_was_checked)
        assert _login(port, attacker, "alice", PASSWORDS["alice"]).startswith(b"454 4.7.0")
    assert _checks(relay) == (10, 11)  # the refused login of alice was not checked


def test_every_check_costs_one_bcrypt_whatever_the_username(relay_factory: Any) -> None:
    """Unknown users, plaintext users and bcrypt users cost the same: one bcrypt at the Secret's cost."""
    relay, port = _relay(relay_factory)
    attempts = [
        ("bob", "wrong", b"535"),
        ("nobody", "wrong", b"535"),
        ("carol", "wrong", b"535"),
        ("\udcff", "wrong", b"535"),  # not UTF-8 on the wire
        ("carol", PASSWORDS["carol"], b"235"),
        ("bob", PASSWORDS["bob"], b"235"),
    ]
    for n, (user, password, expected) in enumerate(attempts):
        before = _checks(relay)[1]
        with raw_client(port, f"127.0.3.{n + 1}") as sock:
            read_reply(sock)
            command(sock, b"EHLO timing.test")
            blob = b"\0" + user.encode("utf-8", "surrogateescape") + b"\0" + password.encode()
            reply = command(sock, b"AUTH PLAIN " + base64.b64encode(blob))
        assert reply[:3] == expected, (user, reply)
        assert _checks(relay)[1] == before + 1, user
    assert relay.metric("smtp_relay_auth_password_checks_total", kind="plain") == 0


def test_a_plaintext_only_secret_costs_no_bcrypt(relay_factory: Any) -> None:
    relay, port = _relay(relay_factory, plaintext_only=True)
    assert _login(port, "127.0.4.1", "nobody", "wrong").startswith(b"535")
    assert _login(port, "127.0.4.2", "alice", "wrong").startswith(b"535")
    assert _login(port, "127.0.4.3", "alice", PASSWORDS["alice"]).startswith(b"235")
    assert relay.metric("smtp_relay_auth_password_checks_total", kind="plain") == 3
    assert relay.metric("smtp_relay_auth_password_checks_total", kind="bcrypt") == 0
