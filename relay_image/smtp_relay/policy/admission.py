"""The listener's admission chains: may this client connect, send MAIL, add this RCPT?

A thin name over `policy.chain` for the checks of `policy.checks.listener`, built from one spec (a
config reload builds a new Admission). Synchronous: the listener asks before the policy engine's
own chains, without awaiting. `connect`, `mail` and `rcpt` are the chains themselves, so a test or
an extension appends its check to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.policy.chain import Chain
from smtp_relay.policy.checks import listener
from smtp_relay.policy.util import parse_networks
from smtp_relay.policy.verdict import ACCEPTED, Decision, Facts


@dataclass
class Admission:
    """The per-stage listener chains built from one spec."""

    connect: Chain
    mail: Chain
    rcpt: Chain

    @classmethod
    def from_spec(cls, spec: SmtpRelaySpec) -> Admission:
        return cls(
            connect=Chain("connect", sync=True),
            mail=Chain(
                "mail",
                [
                    listener.TLS_REQUIRED,
                    listener.AUTH_REQUIRED,
                    listener.declared_size(spec.policy.max_message_bytes),
                    listener.sender_domain(spec.senders.allowed_domains),
                ],
                sync=True,
            ),
            rcpt=Chain(
                "rcpt",
                [
                    listener.relay_permission(parse_networks(spec.clients.allowed_networks)),
                    listener.recipient_count(spec.policy.max_recipients),
                ],
                sync=True,
            ),
        )

    # The listener only tells refusals from the rest: anything else is the one shared accepting Decision.

    def on_connect(self, facts: Facts) -> Decision:
        verdict = self.connect.run_sync(facts)
        return Decision(verdict) if verdict.refuses else ACCEPTED

    def on_mail(self, facts: Facts) -> Decision:
        verdict = self.mail.run_sync(facts)
        return Decision(verdict) if verdict.refuses else ACCEPTED

    def on_rcpt(self, facts: Facts) -> Decision:
        verdict = self.rcpt.run_sync(facts)
        return Decision(verdict) if verdict.refuses else ACCEPTED
