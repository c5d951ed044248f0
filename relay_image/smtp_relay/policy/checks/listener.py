"""The listener's own admission checks: TLS and AUTH where the listener requires them, the declared
size, the allowed sender domains, relay permission and the recipient count.

Pure (no I/O, no clock). They are the relay's contract with its clients rather than policy, so they
are not policy checks (`policy=False`): not counted in the policy metrics, and enforced even in
`policy.mode: audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from smtp_relay.model.envelope import domain_of
from smtp_relay.policy.util import NetworkList, ip_in
from smtp_relay.policy.verdict import Check, Facts, Verdict, defer, reject


def check_tls_required(facts: Facts) -> Verdict | None:
    if facts.listener.require_tls and not facts.secure:
        return reject(530, "5.7.0", "Must issue a STARTTLS command first", "tls_required")
    return None


def check_auth_required(facts: Facts) -> Verdict | None:
    if facts.listener.auth == "required" and facts.auth_user is None:
        return reject(530, "5.7.0", "Authentication required", "auth_required")
    return None


TLS_REQUIRED: Final = Check("tls_required", "mail", check_tls_required, policy=False)
AUTH_REQUIRED: Final = Check("auth_required", "mail", check_auth_required, policy=False)


def declared_size(max_bytes: int) -> Check:
    def check_declared_size(facts: Facts) -> Verdict | None:
        if facts.declared_size is not None and facts.declared_size > max_bytes:
            return reject(552, "5.3.4", "Message size exceeds fixed maximum message size", "message_size")
        return None

    return Check("declared_size", "mail", check_declared_size, policy=False)


def sender_domain(allowed_domains: Sequence[str]) -> Check:
    allowed = frozenset(d.lower() for d in allowed_domains)

    def check_sender_domain(facts: Facts) -> Verdict | None:
        # The null sender (bounces) has no domain and is always allowed.
        if not allowed or not facts.mail_from:
            return None
        if domain_of(facts.mail_from).rstrip(".") in allowed:
            return None
        return reject(553, "5.7.1", "Sender address domain not allowed", "sender_domain")

    return Check("sender_domain", "mail", check_sender_domain, policy=False)


def relay_permission(networks: NetworkList) -> Check:
    """Never an open relay: every recipient needs an authenticated user or an allowed client network.

    The relay has no local domains, so the recipient itself is never a reason to accept.
    """

    def check_relay_permission(facts: Facts) -> Verdict | None:
        if facts.auth_user is not None or ip_in(facts.client_ip, networks):
            return None
        return reject(554, "5.7.1", "Relay access denied", "relay_denied")

    return Check("relay_permission", "rcpt", check_relay_permission, policy=False)


def recipient_count(max_recipients: int) -> Check:
    def check_recipient_count(facts: Facts) -> Verdict | None:
        if facts.rcpt_count >= max_recipients:
            return defer(452, "4.5.3", "Too many recipients", "too_many_recipients")
        return None

    return Check("recipient_count", "rcpt", check_recipient_count, policy=False)
