"""The AUTH failure throttle against password guessing: tarpit, then 454 4.7.0 for a cool-down.

Before AUTH, a client in its cool-down is refused without the exchange; a failed login is answered
after the throttle's growing delay. A successful login clears the client's record (the engine's
`auth_succeeded`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from smtp_relay.policy.chain import Accounting
from smtp_relay.policy.ratelimit import AuthThrottle
from smtp_relay.policy.verdict import Check, Facts, Verdict, reject


def auth_throttle(throttle: AuthThrottle) -> Check:
    """454 4.7.0 while the client is cooling down after too many failed logins."""

    def check_auth_throttle(facts: Facts) -> Verdict | None:
        return throttle.before_auth(facts.client_ip)

    return Check("auth_throttle", "auth", check_auth_throttle)


async def failed_login(
    throttle: AuthThrottle, facts: Facts, accounting: Accounting, sleep: Callable[[float], Awaitable[None]]
) -> Verdict:
    """The reply for a failed AUTH (535 5.7.8, or 454 4.7.0 once throttled), given after the tarpit delay.

    In audit mode a throttled client gets the plain failure instead of the 454.
    """
    verdict, delay = throttle.failure(facts.client_ip)
    if delay > 0:
        await sleep(delay)
    if verdict.code == 454 and accounting.decide("auth_throttle", verdict, facts) is None:
        return reject(535, "5.7.8", "Authentication credentials invalid", "auth_failed")
    return verdict
