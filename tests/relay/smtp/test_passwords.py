"""Password checks: one bcrypt at the Secret's cost for every username, a bounded pool, cancellable waits."""

from __future__ import annotations

import asyncio

import bcrypt

from smtp_relay.smtp.passwords import PasswordChecker, UserTable
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.harness.metrics import sample


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def test_the_dummy_hash_has_the_highest_cost_of_the_secret_and_matches_nothing() -> None:
    users = UserTable.from_users({"a": _hash("pa", 4), "b": _hash("pb", 6), "c": "plain"})
    assert users.dummy is not None and users.dummy.startswith(b"$2b$06$")
    assert bcrypt.checkpw(b"", users.dummy) is False  # well formed: bcrypt runs it instead of refusing it
    assert UserTable.from_users({"c": "plain"}).dummy is None


async def test_every_username_costs_exactly_one_bcrypt() -> None:
    metrics = RelayMetrics()
    checker = PasswordChecker(metrics, concurrency=1)
    users = UserTable.from_users({"hashed": _hash("right", 4), "plain": "right", "broken": "$2b$04$not-a-hash"})
    try:
        cases = [("hashed", b"right", True), ("hashed", b"wrong", False), ("plain", b"right", True)]
        cases += [("plain", b"wrong", False), ("nobody", b"right", False), ("broken", b"$2b$04$not-a-hash", False)]
        for n, (name, password, expected) in enumerate(cases, start=1):
            assert await checker.verify(users, name, password) is expected, name
            assert sample(metrics.registry, "smtp_relay_auth_password_checks_total", kind="bcrypt") == n, name
        for name in ("hashed", "plain", "nobody"):  # over bcrypt's 72 bytes: refused unhashed, for everyone alike
            assert await checker.verify(users, name, b"x" * 100) is False
        assert sample(metrics.registry, "smtp_relay_auth_password_checks_total", kind="bcrypt") == len(cases)
    finally:
        checker.close()


async def test_checks_waiting_for_the_pool_cost_nothing_when_cancelled() -> None:
    metrics = RelayMetrics()
    checker = PasswordChecker(metrics, concurrency=1)
    users = UserTable.from_users({"hashed": _hash("right", 10)})
    try:
        checks = [asyncio.ensure_future(checker.verify(users, "hashed", b"wrong")) for _ in range(5)]
        await asyncio.sleep(0)  # the first takes the only slot, the others wait for it
        for waiting in checks[1:]:
            waiting.cancel()
        assert await checks[0] is False
        assert all(check.cancelled() for check in checks[1:])
        assert sample(metrics.registry, "smtp_relay_auth_password_checks_total", kind="bcrypt") == 1
    finally:
        checker.close()
