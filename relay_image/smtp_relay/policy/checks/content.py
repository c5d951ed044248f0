"""The end-of-DATA checks' decisions: blocked attachments, virus, spam score, and the rate limits
counting the message.

Each turns one finding (policy.attachments, the scanners, the spam engine) into a verdict; the DATA
stage (policy.data_stage) gathers the findings and applies the verdicts in this order. A malware
finding is either refused or held: held means a 250 for the client and the quarantine for the
message, returned as (verdict, quarantine reason).
"""

from __future__ import annotations

import logging
from typing import Literal

from smtp_relay.config.policy_spec import SpamSpec, VirusSpec
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.attachments import AttachmentFinding
from smtp_relay.policy.ratelimit import MessageLimits
from smtp_relay.policy.scanners import ScannerError, VirusResult
from smtp_relay.policy.util import reply_text
from smtp_relay.policy.verdict import Action, Facts, SpamReport, Verdict, defer, reject

log = logging.getLogger(__name__)

ContentVerdict = tuple[Verdict | None, str | None]
"""A verdict (None: no objection) and, when the message is to be held, the quarantine reason."""
_CLEAN: ContentVerdict = (None, None)


def hold_or_reject(check: str, action: Literal["reject", "quarantine"], text: str, held_for: str) -> ContentVerdict:
    """A malware finding: quarantine (the client gets 250) or refuse with 554 5.7.1, as the spec says."""
    if action == "quarantine":
        return Verdict(Action.TAG, 250, "2.7.0", text, check), held_for
    return reject(554, "5.7.1", text, check), None


def attachment_outcome(finding: AttachmentFinding, action: Literal["reject", "quarantine"]) -> ContentVerdict:
    """The blocked attachment, named in the reply (inside an archive: its path).

    A message whose MIME structure readers may disagree about is refused with 554 5.6.0 whatever the
    action: holding it would only defer the question of what it contains to whoever releases it.
    """
    if finding.reason == "structure":
        return malformed_message(finding.detail), None
    what = f"{finding.filename} ({finding.reason}: {finding.detail})" if finding.filename else finding.detail
    text = f"Message rejected: blocked attachment {reply_text(what, 200)}"
    return hold_or_reject("attachments", action, text, f"attachment: {what}")


def malformed_message(detail: str) -> Verdict:
    """554 5.6.0: the structure is broken, so a retry cannot help (never a 4xx)."""
    return reject(554, "5.6.0", f"Message rejected: malformed MIME structure ({reply_text(detail, 200)})", "mime")


def virus_outcome(result: VirusResult | ScannerError, spec: VirusSpec) -> ContentVerdict:
    """An infected message is held or refused; a scanner failure defers or, by `onScannerError`, accepts."""
    if isinstance(result, ScannerError):
        if spec.on_scanner_error == "defer":
            return defer(451, "4.3.0", "Virus scanner unavailable, try again later", "virus_scanner"), None
        log.warning("virus scanner failed, accepting unscanned (onScannerError: accept): %s", result)
        return _CLEAN
    if not result.infected:
        return _CLEAN
    signature = reply_text(result.signature or "unknown", 100)
    return hold_or_reject("virus", spec.action, f"Message rejected: virus found ({signature})", f"virus: {signature}")


def spam_verdict(report: SpamReport, spec: SpamSpec) -> Verdict | None:
    """550 5.7.1 above `rejectAbove`, a TAG above `tagAbove`."""
    if report.score > spec.reject_above:
        text = f"Message rejected as spam (score {report.score:.1f} > {spec.reject_above:.1f})"
        return reject(550, "5.7.1", text, "spam")
    if report.score > spec.tag_above:
        return Verdict(Action.TAG, 250, "2.7.1", f"spam score {report.score:.1f}", "spam")
    return None


async def count_message(limiter: MessageLimits, facts: Facts, envelope: Envelope) -> Verdict | None:
    """451 4.7.1 when a limit has no room for this message; otherwise the message is counted.

    Authoritative (MAIL only checks early): parallel sessions cannot slip past the limit together, in
    this process or, with fleet-wide limits, in any pod (one atomic script in Redis).
    """
    return await limiter.count(facts.client_ip, facts.auth_user, envelope.mail_from)
