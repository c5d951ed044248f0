"""The policy's vocabulary: what a check is told (`Facts`), what it answers (`Verdict`), what a check is.

Everything the listener, the checks, the runner and the cleanup stage exchange is defined here and
nowhere else, so none of them has to import another's module for a type. Pure data: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from smtp_relay.config.spec import Listener


class Action(enum.Enum):
    """What a check wants done with the command."""

    ACCEPT = "accept"
    DEFER = "defer"
    """4xx: the client keeps the message and retries."""
    REJECT = "reject"
    """5xx: the client gives up (and bounces)."""
    TAG = "tag"
    """Accept, but mark the message (spam headers); never ends the chain."""


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


ACCEPT: Final = Verdict(Action.ACCEPT)
SKIP: Final = Verdict(Action.ACCEPT, reason="not_applicable")
"""A check's answer when it does not apply to these facts (a trusted client, a route without DNS):
unlike None ("applies, no objection") it is neither counted nor logged. An accept, should it leak."""


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


# --- checks ------------------------------------------------------------------------------------

Stage = Literal["connect", "auth", "mail", "rcpt", "data"]

Decide = Callable[[Facts], Verdict | None]
"""A synchronous check: None (no opinion), SKIP (does not apply) or a Verdict. Pure and cheap."""
Outcome = Verdict | None | Awaitable[Verdict | None]
DecideAsync = Callable[[Facts], Outcome]
"""A check that may need I/O: it answers at once when it can (cached, not applicable) and returns an
awaitable only when it has to wait, so the hot path creates no coroutine for an answer it already has."""


@dataclass(frozen=True, slots=True)
class Check:
    """One unit of a stage's chain (Haraka's plugin hook): a name, its stage, and the decision."""

    name: str
    """The check label of the policy metrics and log lines."""
    stage: Stage
    decide: DecideAsync
    policy: bool = True
    """A policy check: counted in the policy metrics and only logged in `policy.mode: audit`.
    The listener's own checks (TLS, AUTH, size, relay permission) are neither."""
    waits: bool = False
    """`decide` may return an awaitable: the check can only run in an async chain."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The listener's view of a chain's outcome (`Admission.on_*`): the verdict that decides."""

    verdict: Verdict


ACCEPTED: Final = Decision(ACCEPT)


# --- results several modules share ------------------------------------------------------------


@dataclass(frozen=True)
class SpamReport:
    """A spam engine's verdict on one message (builtin scorer, rspamd or spamd; read by cleanup's headers)."""

    score: float
    symbols: tuple[str, ...]
    """Names of the rules that hit (engine-specific vocabulary)."""
    engine: str
    """builtin, rspamd or spamassassin."""
    required: float | None = None
    """The engine's own spam threshold, when it reports one (the relay uses SpamSpec's thresholds)."""
    action: str | None = None
    """rspamd's recommended action (no action, add header, reject, ...), when the engine gives one."""


@dataclass(frozen=True)
class DataDecision:
    """The end-of-DATA outcome: the reply, headers to prepend when accepted, and whether to quarantine."""

    verdict: Verdict
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    quarantine_reason: str | None = None
    """Set when the message is to be stored in the quarantine instead of the spool (the client gets a 250)."""
    verdicts: tuple[Verdict, ...] = ()
    """Every non-accept verdict of the checks (for the quarantine sidecar and the log)."""


class HeaderComposer(Protocol):
    """Builds the headers an accepted message gets from the policy's findings (cleanup's `policy_headers`).

    The engine is handed one instead of importing the cleanup stage, which sits above policy.
    """

    def __call__(
        self,
        *,
        hostname: str,
        threshold: float,
        report: SpamReport | None,
        spf_result: str | None,
        mail_from: str,
        helo: str,
        tags: Sequence[str],
    ) -> list[tuple[str, str]]: ...
