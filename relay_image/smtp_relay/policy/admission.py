"""Admission decisions for the SMTP listener: may this client connect, send MAIL, add this RCPT?

Pure (no I/O, no clock): every decision is a function of plain `Facts`, so it is unit-tested with
plain values and the listener only turns a `Verdict` into a reply. Checks are small callables kept
in ordered per-stage lists; the later policy chain (SPF, DNSBL, rate limits, ...) appends its own
checks to the same lists instead of growing the listener.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from smtp_relay.config.spec import Listener, SmtpRelaySpec
from smtp_relay.model.envelope import domain_of


class Action(enum.Enum):
    """What a check wants done with the command."""

    ACCEPT = "accept"
    DEFER = "defer"
    """4xx: the client keeps the message and retries."""
    REJECT = "reject"
    """5xx: the client gives up (and bounces)."""
    TAG = "tag"
    """Accept, but mark the message (spam headers); collected, never ends the chain."""


@dataclass(frozen=True)
class Verdict:
    """One check's answer: an action and the SMTP reply that carries it."""

    action: Action
    code: int = 250
    status: str = "2.0.0"
    """RFC 3463 enhanced status code."""
    text: str = "Ok"
    reason: str = ""
    """Short machine label for the rejected{reason} metric and the log line."""

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def refuses(self) -> bool:
        return self.action in (Action.DEFER, Action.REJECT)


ACCEPT = Verdict(Action.ACCEPT)


def defer(code: int, status: str, text: str, reason: str) -> Verdict:
    return Verdict(Action.DEFER, code, status, text, reason)


def reject(code: int, status: str, text: str, reason: str) -> Verdict:
    return Verdict(Action.REJECT, code, status, text, reason)


@dataclass(frozen=True)
class Facts:
    """What is known about the session when a decision is made; later stages fill more fields."""

    listener: Listener
    client_ip: str
    """The client address policy sees (the PROXY protocol source when enabled)."""
    secure: bool = False
    """The session is encrypted (STARTTLS done or implicit TLS)."""
    auth_user: str | None = None
    helo: str = ""
    mail_from: str | None = None
    """Envelope sender of the transaction ("" is the null sender); None before MAIL."""
    declared_size: int | None = None
    """The SIZE= parameter of MAIL, if given."""
    rcpt: str | None = None
    """The recipient being decided at RCPT."""
    rcpt_count: int = 0
    """Recipients already accepted in this transaction."""


Check = Callable[[Facts], Verdict | None]
"""A check returns None (no opinion) or a Verdict. Checks must be pure and cheap."""


@dataclass(frozen=True)
class Decision:
    """The outcome of a chain: the verdict that decides, plus every TAG collected on the way."""

    verdict: Verdict
    tags: tuple[Verdict, ...] = ()


def run_chain(checks: Sequence[Check], facts: Facts) -> Decision:
    """First DEFER/REJECT wins (later checks are skipped); TAGs accumulate; otherwise ACCEPT."""
    tags: list[Verdict] = []
    for check in checks:
        verdict = check(facts)
        if verdict is None or verdict.action is Action.ACCEPT:
            continue
        if verdict.action is Action.TAG:
            tags.append(verdict)
            continue
        return Decision(verdict, tuple(tags))
    return Decision(ACCEPT, tuple(tags))


# --- the checks of the listener -------------------------------------------------------------

NetworkList = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(networks: Sequence[str]) -> NetworkList:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@functools.lru_cache(maxsize=8192)
def ip_in(client_ip: str, networks: NetworkList) -> bool:
    """Is the address in one of the networks? IPv4-mapped IPv6 counts as its IPv4 address.

    Cached: every transaction asks several times for the same few client addresses, and parsing an
    address costs more than the rest of a RCPT check.
    """
    try:
        addr = ipaddress.ip_address(client_ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def check_tls_required(facts: Facts) -> Verdict | None:
    if facts.listener.require_tls and not facts.secure:
        return reject(530, "5.7.0", "Must issue a STARTTLS command first", "tls_required")
    return None


def check_auth_required(facts: Facts) -> Verdict | None:
    if facts.listener.auth == "required" and facts.auth_user is None:
        return reject(530, "5.7.0", "Authentication required", "auth_required")
    return None


def sender_domain_check(allowed_domains: Sequence[str]) -> Check:
    allowed = frozenset(d.lower() for d in allowed_domains)

    def check_sender_domain(facts: Facts) -> Verdict | None:
        # The null sender (bounces) has no domain and is always allowed.
        if not allowed or not facts.mail_from:
            return None
        if domain_of(facts.mail_from).rstrip(".") in allowed:
            return None
        return reject(553, "5.7.1", "Sender address domain not allowed", "sender_domain")

    return check_sender_domain


def size_check(max_bytes: int) -> Check:
    def check_declared_size(facts: Facts) -> Verdict | None:
        if facts.declared_size is not None and facts.declared_size > max_bytes:
            return reject(552, "5.3.4", "Message size exceeds fixed maximum message size", "message_size")
        return None

    return check_declared_size


def relay_check(networks: NetworkList) -> Check:
    """Never an open relay: every recipient needs an authenticated user or an allowed client network.

    The relay has no local domains, so the recipient itself is never a reason to accept.
    """

    def check_relay_permission(facts: Facts) -> Verdict | None:
        if facts.auth_user is not None or ip_in(facts.client_ip, networks):
            return None
        return reject(554, "5.7.1", "Relay access denied", "relay_denied")

    return check_relay_permission


def recipients_check(max_recipients: int) -> Check:
    def check_recipient_count(facts: Facts) -> Verdict | None:
        if facts.rcpt_count >= max_recipients:
            return defer(452, "4.5.3", "Too many recipients", "too_many_recipients")
        return None

    return check_recipient_count


@dataclass
class Admission:
    """The per-stage check lists built from one spec; a config reload builds a new Admission."""

    connect: list[Check] = field(default_factory=list)
    mail: list[Check] = field(default_factory=list)
    rcpt: list[Check] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: SmtpRelaySpec) -> Admission:
        """The listener's own checks; the policy chain appends to the returned lists."""
        return cls(
            connect=[],
            mail=[
                check_tls_required,
                check_auth_required,
                size_check(spec.policy.max_message_bytes),
                sender_domain_check(spec.senders.allowed_domains),
            ],
            rcpt=[
                relay_check(parse_networks(spec.clients.allowed_networks)),
                recipients_check(spec.policy.max_recipients),
            ],
        )

    def on_connect(self, facts: Facts) -> Decision:
        return run_chain(self.connect, facts)

    def on_mail(self, facts: Facts) -> Decision:
        return run_chain(self.mail, facts)

    def on_rcpt(self, facts: Facts) -> Decision:
        return run_chain(self.rcpt, facts)
