"""Checks at RCPT TO: recipient syntax (501 5.1.3), then whether its domain can receive mail (550 5.1.2).

Answered during the dialogue, so the sending application gets the error synchronously instead of a
bounce hours later for a mistyped address or domain.
"""

from __future__ import annotations

from smtp_relay.config.spec import RoutingSpec
from smtp_relay.delivery.router import choose_route
from smtp_relay.model.envelope import domain_of
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.recipients import recipient_domain_verdict, recipient_syntax_verdict
from smtp_relay.policy.verdict import SKIP, Check, Facts, Outcome, Verdict


def _check_recipient_syntax(facts: Facts) -> Verdict | None:
    return recipient_syntax_verdict(facts.rcpt or "")


RECIPIENT_SYNTAX = Check("rcpt_syntax", "rcpt", _check_recipient_syntax)


def recipient_domain(routing: RoutingSpec, lookups: Lookups) -> Check:
    """550 5.1.2 for a domain without MX or address records; no opinion when DNS does not answer.

    Only for recipients this relay itself delivers to their MX: a smarthost may know domains public
    DNS does not (internal ones), and captured mail goes nowhere.
    """

    async def look_up(domain: str) -> Verdict | None:
        return recipient_domain_verdict(domain, await lookups.domain_exists(domain))

    def check_recipient_domain(facts: Facts) -> Outcome:
        rcpt = facts.rcpt or ""
        domain = domain_of(rcpt.strip("<>")).rstrip(".")
        if not domain or choose_route(routing, facts.mail_from or "", rcpt).kind != "mx":
            return SKIP  # "postmaster" has no domain to look up; other routes decide downstream
        exists = lookups.domains.get(domain)
        if exists is not None:
            return recipient_domain_verdict(domain, exists)
        return look_up(domain)

    return Check("rcpt_domain", "rcpt", check_recipient_domain, waits=True)
