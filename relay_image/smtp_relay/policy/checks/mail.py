"""Checks at MAIL FROM: verified sender domain, rate limits (early refusal), SPF.

SPF runs here because MAIL FROM is its identity and nothing later adds to it: a fail refuses the
transaction before any recipient or data is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from smtp_relay.config.domains import SendingDomains
from smtp_relay.model.envelope import domain_of
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.ratelimit import MessageLimits
from smtp_relay.policy.spf import SpfMode, spf_applies, spf_verdict
from smtp_relay.policy.util import NetworkList, reply_text
from smtp_relay.policy.verdict import SKIP, Check, Facts, Outcome, Verdict, defer, reject

log = logging.getLogger(__name__)


def sender_verified(required: bool, sending_domains: Callable[[], SendingDomains | None]) -> Check:
    """With `senders.requireVerifiedDomain`: 550 5.7.1 unless the sender's domain (or a parent domain) has a
    verified SendingDomain, naming the domain and what is missing.

    `sending_domains` gives the current set (from the operator's rendered config, or the local file); while it
    is genuinely unknown (None: a pod whose config does not carry them yet), senders are deferred with 451 4.7.0
    rather than bounced, and a log line says why.
    """

    def check_sender_verified(facts: Facts) -> Verdict | None:
        mail_from = facts.mail_from
        if not required or not mail_from:
            return None
        domain = domain_of(mail_from).rstrip(".").lower()
        domains = sending_domains()
        if domains is None:
            log.warning("deferring MAIL FROM %s: the relay has not yet received its verified SendingDomains", domain)
            text = "Sender domain verification status not known yet, try again later"
            return defer(451, "4.7.0", text, "sender_verified")
        found = domains.for_address_domain(domain)
        if found is not None and found.verified:
            return None
        if found is None:
            why = "has no SendingDomain for this relay"
        elif found.missing:
            why = f"is not verified: its DNS records are not in place ({', '.join(found.missing)})"
        else:
            why = "is not verified: its DNS records are not in place"
        return reject(550, "5.7.1", f"Sender domain {reply_text(domain)} {why}", "sender_verified")

    return Check("sender_verified", "mail", check_sender_verified)


def rate_limits(limiter: MessageLimits) -> Check:
    """451 4.7.1 when a rate limit has no room left; counts nothing (end of DATA counts the message).

    Fleet-wide limits answer from what this process knows (no round trip to Redis): the end of DATA asks Redis.
    """

    def check_rate_limits(facts: Facts) -> Verdict | None:
        return limiter.check(facts.client_ip, facts.auth_user, facts.mail_from)

    return Check("ratelimit", "mail", check_rate_limits)


def spf(mode: SpfMode, trusted: NetworkList, lookups: Lookups) -> Check:
    """The SPF verdict of `policy.ipAuthority.spf` (see spf.spf_verdict); not asked for allowedNetworks."""

    async def evaluate(facts: Facts, mail_from: str) -> Verdict | None:
        return spf_verdict(await lookups.spf(facts.client_ip, mail_from, facts.helo), mode)

    def check_spf(facts: Facts) -> Outcome:
        if not spf_applies(mode, facts.client_ip, trusted):
            return SKIP
        mail_from = facts.mail_from or ""
        cached = lookups.cached_spf(facts.client_ip, mail_from, facts.helo)
        if cached is not None:
            return spf_verdict(cached, mode)
        return evaluate(facts, mail_from)

    return Check("spf", "mail", check_spf, waits=True)
