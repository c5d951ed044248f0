"""The data that flows through the relay pipeline: envelopes, stored messages, delivery outcomes.

Plain dataclasses with no I/O, shared by the listener, the spool, the scheduler, the router and
delivery, so each stage can be tested with plain values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    """What the SMTP transaction said about a message (everything but the data)."""

    mail_from: str
    """Envelope sender; "" is the null sender (bounces), which is never bounced to."""
    rcpt_tos: tuple[str, ...]
    """Envelope recipients, in the order given."""
    client_ip: str = ""
    """The client's address (after PROXY protocol)."""
    helo: str = ""
    """The HELO/EHLO name."""
    auth_user: str | None = None
    """The SMTP AUTH user, if the client logged in."""
    smtputf8: bool = False
    """The client asked for SMTPUTF8: delivery must ask the next hop for it too."""
    body_8bit: bool = False
    """BODY=8BITMIME was given."""
    received_at: float = 0.0
    """Unix time the 250 was given; the age for maxAge counts from here."""
    is_bounce: bool = False
    """This message is a delivery status notification made by the relay."""


class QueueState(enum.Enum):
    """Postfix-like queue states of a stored message."""

    ACTIVE = "active"
    DEFERRED = "deferred"
    DONE = "done"


@dataclass
class StoredMessage:
    """A message that got its 250: durable in the spool until every recipient is settled."""

    id: str
    """Queue id, unique within the spool (also the Message's log key)."""
    envelope: Envelope
    size: int
    """Size of the message data in bytes."""
    pending: set[str] = field(default_factory=set)
    """Recipients neither delivered nor bounced yet."""
    attempts: int = 0
    """Delivery attempts made so far (for the retry schedule)."""
    next_attempt: float = 0.0
    """Unix time of the next attempt (0: now)."""
    last_error: str = ""
    """The last temporary failure, for logs and for the bounce at expiry."""
    state: QueueState = QueueState.ACTIVE


class OutcomeKind(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    SHAPED = "shaped"
    """Not attempted: the destination's traffic shaping holds it until `not_before` (not a failed attempt)."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient in one delivery attempt."""

    kind: OutcomeKind
    code: int = 250
    """The SMTP reply code (or 0 for a connection-level failure)."""
    message: str = ""
    """The reply text or the error, for logs and bounces."""
    remote: str = ""
    """Which host answered (host:port), for logs and DSNs."""
    not_before: float = 0.0
    """SHAPED: Unix time from which the recipient may be tried again."""

    @classmethod
    def delivered(cls, remote: str = "", message: str = "") -> Outcome:
        return cls(OutcomeKind.DELIVERED, 250, message, remote)

    @classmethod
    def temporary(cls, code: int, message: str, remote: str = "") -> Outcome:
        return cls(OutcomeKind.TEMPORARY, code, message, remote)

    @classmethod
    def permanent(cls, code: int, message: str, remote: str = "") -> Outcome:
        return cls(OutcomeKind.PERMANENT, code, message, remote)

    @classmethod
    def shaped(cls, not_before: float, message: str, remote: str = "") -> Outcome:
        return cls(OutcomeKind.SHAPED, 0, message, remote, not_before)


def domain_of(address: str) -> str:
    """The lower-cased domain of an address ("" for the null sender or a bare local part)."""
    return address.rpartition("@")[2].lower() if "@" in address else ""
