"""The AUTH failure throttle against password guessing: refusal before any check, tarpit, then 454 4.7.0.

Before the AUTH exchange, and again just before the password is checked (when the attempt is
reserved), an address in its cool-down or without attempts left is refused; a failed login is
answered after the throttle's growing delay. A successful login forgets only that username's
failures from that address (the engine's `auth_succeeded`). The throttle is an `AuthLimits`: this
process's counts, or the fleet's in Redis (spec.limits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from smtp_relay.policy.chain import Accounting
from smtp_relay.policy.ratelimit import AuthLimits
from smtp_relay.policy.verdict import ACCEPT, Check, Facts, Verdict, reject


def auth_throttle(throttle: AuthLimits) -> Check:
    """454 4.7.0 while the client is cooling down or has no attempts left."""

    def check_auth_throttle(facts: Facts) -> Awaitable[Verdict | None]:
        return throttle.refusal(facts.client_ip, reserve=False)

    return Check("auth_throttle", "auth", check_auth_throttle, waits=True)


async def reserve_attempt(throttle: AuthLimits, facts: Facts, accounting: Accounting) -> Verdict:
    """Reserve one password check, or refuse it (454 4.7.0) when the address has no attempt left.

    Checking and reserving happen in one atomic step (one synchronous call locally, one script in
    Redis), so parallel sessions cannot all pass the check before any of them counts. In audit mode
    a refused attempt is logged and reserved anyway.
    """
    refused = await throttle.refusal(facts.client_ip, reserve=True)
    if refused is None:
        return ACCEPT
    if accounting.decide("auth_throttle", refused, facts) is not None:
        return refused
    await throttle.reserve_anyway(facts.client_ip)
    return ACCEPT


async def failed_login(
    throttle: AuthLimits,
    facts: Facts,
    username: str,
    accounting: Accounting,
    sleep: Callable[[float], Awaitable[None]],
) -> Verdict:
    """The reply for a failed AUTH (535 5.7.8, or 454 4.7.0 once throttled), given after the tarpit delay.

    The failure is recorded before the delay, so a client that hangs up during it has still spent its attempt.
    In audit mode a throttled client gets the plain failure instead of the 454.
    """
    verdict, delay = await throttle.failed(facts.client_ip, username)
    if delay > 0:
        await sleep(delay)
    if verdict.code == 454 and accounting.decide("auth_throttle", verdict, facts) is None:
        return reject(535, "5.7.8", "Authentication credentials invalid", "auth_failed")
    return verdict
