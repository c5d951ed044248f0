"""The end-of-DATA stage: attachments, virus and spam (scanners run concurrently), then the rate limits
count the message.

The first refusal decides, in that order; a quarantine verdict holds the message unless a later
check refuses it outright. Once something refuses, the scanners are not asked (except in audit mode,
which wants every verdict counted). The message is parsed once for both local content checks, on
the event loop when it is small and in the content worker pool (a few threads, shared by all sessions)
when it is big; an inline attachment inspection whose archives outgrow their small inline budget
(`attachments.NeedsWorker`) is repeated in the pool. A message that cannot be parsed at all is
refused with 554 5.6.0. For an accepted message, the SPF
result, the tags (SPF fail, DNSBL listing in tag mode) and the spam report go to the header
composer the engine was given (cleanup's), which this stage does not import.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from typing import TypeVar

from smtp_relay.config.policy_spec import AttachmentsSpec, PolicySpec
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.attachments import AttachmentFinding, NeedsWorker, inspect_attachments
from smtp_relay.policy.chain import Accounting
from smtp_relay.policy.checks.content import (
    attachment_outcome,
    count_message,
    malformed_message,
    spam_verdict,
    virus_outcome,
)
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.mime import parse_message
from smtp_relay.policy.ratelimit import MessageLimits
from smtp_relay.policy.scanners import SCAN_TIMEOUT, ScannerError, Scanners, VirusResult
from smtp_relay.policy.spam_builtin import score_builtin
from smtp_relay.policy.spf import SpfResult, spf_applies, spf_verdict
from smtp_relay.policy.util import NetworkList
from smtp_relay.policy.verdict import ACCEPT, DataDecision, Facts, HeaderComposer, SpamReport, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")

INLINE_BYTES = 256 * 1024
"""Messages up to this size are parsed on the event loop; bigger ones in the content pool."""
CONTENT_WORKERS = 2
"""Threads of the content pool: parsing and inspecting is CPU work, so more than the cores buys nothing, and
a flood of big messages waits its turn instead of starving the process."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def content_pool() -> ThreadPoolExecutor:
    """The process's bounded pool for content checks (created on first use, shared across reloads)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=CONTENT_WORKERS, thread_name_prefix="content")
        return _pool


async def run_in_pool(func: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(content_pool(), func)


class _Findings:
    """One message's verdicts as they come in: all of them, the first refusal, the first hold."""

    __slots__ = ("accounting", "facts", "fired", "quarantine", "refusal")

    def __init__(self, accounting: Accounting, facts: Facts) -> None:
        self.accounting = accounting
        self.facts = facts
        self.fired: list[Verdict] = []
        self.refusal: Verdict | None = None
        self.quarantine: str | None = None

    def note(self, check: str, verdict: Verdict | None, held_for: str | None = None) -> None:
        if verdict is not None:
            self.fired.append(verdict)
        if held_for is None:
            decided = self.accounting.decide(check, verdict, self.facts)
            if decided is not None and decided.refuses and self.refusal is None:
                self.refusal = decided
            return
        if self.accounting.hold(check, held_for, self.facts) and self.quarantine is None:
            log.info("policy: %s quarantines client %s: %s", check, self.facts.client_ip, held_for)
            self.quarantine = held_for


class DataStage:
    """The end-of-DATA checks of one config; the engine builds a new one on reload."""

    def __init__(
        self,
        policy: PolicySpec,
        *,
        accounting: Accounting,
        metrics: PolicyMetrics,
        scanners: Scanners,
        rate_limiter: MessageLimits,
        lookups: Lookups,
        trusted: NetworkList,
        hostname: str,
        compose_headers: HeaderComposer | None,
    ) -> None:
        self.policy = policy
        self.accounting = accounting
        self.metrics = metrics
        self.scanners = scanners
        self.rate_limiter = rate_limiter
        self.lookups = lookups
        self.trusted = trusted
        self.hostname = hostname
        self.compose_headers = compose_headers

    async def run(self, facts: Facts, data: bytes, envelope: Envelope) -> DataDecision:
        policy = self.policy
        audit = self.accounting.audit
        findings = _Findings(self.accounting, facts)
        attachments = policy.attachments
        # Parse once for both local content checks: parsing is most of their cost.
        parsed = None
        unparsed = False
        if attachments.enabled or policy.spam.engine == "builtin":
            try:
                parsed = await self._cpu(len(data), lambda: parse_message(data))
            except Exception as exc:  # RecursionError or a parser bug: a 5xx, never a 4xx that senders retry
                log.info("policy: message from %s could not be parsed: %r", facts.client_ip, exc)
                findings.note("attachments", malformed_message(f"message could not be parsed ({type(exc).__name__})"))
                unparsed = True
        if attachments.enabled and not unparsed:
            finding = await self._inspect(data, attachments, parsed)
            if finding is not None:
                findings.note("attachments", *attachment_outcome(finding, attachments.action))
            else:
                findings.note("attachments", None)

        scan = audit or findings.refusal is None
        score = not (unparsed and policy.spam.engine == "builtin")  # the builtin engine would parse it again
        virus, spam = await self._scan(facts, data, envelope, parsed, scan=scan, score=score)
        if virus is not None:
            findings.note("virus", *virus_outcome(virus, policy.virus))
        report = spam if isinstance(spam, SpamReport) else None
        if report is not None:
            findings.note("spam", spam_verdict(report, policy.spam))

        if findings.refusal is None:
            decided = self.accounting.decide(
                "ratelimit", await count_message(self.rate_limiter, facts, envelope), facts
            )
            if decided is not None:
                findings.fired.append(decided)
                findings.refusal = decided

        fired = tuple(findings.fired)
        if findings.refusal is not None:
            return DataDecision(findings.refusal, [], None, fired)
        if audit:
            return DataDecision(ACCEPT, [], None, fired)
        headers = await self._headers(facts, envelope, report)
        return DataDecision(ACCEPT, headers, findings.quarantine, fired)

    async def _cpu(self, size: int, func: Callable[[], T]) -> T:
        """Run a CPU-bound check inline for small messages, in the content pool for big ones."""
        if size <= INLINE_BYTES:
            return func()
        return await run_in_pool(func)

    async def _inspect(self, data: bytes, spec: AttachmentsSpec, parsed: Message | None) -> AttachmentFinding | None:
        """Inline with a small archive budget for a small message; in the pool (full budget) otherwise or when
        that ran out."""
        if len(data) <= INLINE_BYTES:
            try:
                return inspect_attachments(data, spec, parsed=parsed, inline=True)
            except NeedsWorker:
                log.debug("policy: attachments of a %d-byte message inspected off the event loop", len(data))
        return await run_in_pool(lambda: inspect_attachments(data, spec, parsed=parsed))

    # --- scanners ----------------------------------------------------------------------------------

    async def _scan(
        self, facts: Facts, data: bytes, envelope: Envelope, parsed: Message | None, *, scan: bool, score: bool = True
    ) -> tuple[VirusResult | ScannerError | None, SpamReport | ScannerError | None]:
        """The virus scanner's and the spam engine's answers (None: not asked), both asked at once."""
        clamd = self.scanners.clamd
        virus_task = self._timed("clamd", clamd.scan(data)) if scan and clamd is not None else None
        scored = scan and score and self.policy.spam.engine != "off"
        spam_task = self._score_spam(facts, data, envelope, parsed) if scored else None
        if virus_task is not None and spam_task is not None:
            return await asyncio.gather(virus_task, spam_task)  # the scanners work concurrently
        if virus_task is not None:
            return await virus_task, None
        if spam_task is not None:
            return None, await spam_task
        return None, None

    async def _score_spam(
        self, facts: Facts, data: bytes, envelope: Envelope, parsed: Message | None = None
    ) -> SpamReport | ScannerError | None:
        engine = self.policy.spam.engine
        if engine == "off":
            return None
        if engine == "builtin":
            spf = await self._spf_for_headers(facts, envelope)
            self.metrics.count_check("spam_builtin")
            spf_result = spf.result if spf is not None else None
            return await self._cpu(len(data), lambda: score_builtin(data, spf_result=spf_result, parsed=parsed))
        if self.scanners.rspamd is not None:
            rspamd = self.scanners.rspamd
            result = await self._timed(
                "rspamd",
                rspamd.check(
                    data,
                    client_ip=facts.client_ip or None,
                    helo=facts.helo or None,
                    mail_from=envelope.mail_from,
                    rcpts=envelope.rcpt_tos,
                    user=facts.auth_user,
                ),
            )
        elif self.scanners.spamd is not None:
            result = await self._timed("spamassassin", self.scanners.spamd.check(data, user=facts.auth_user))
        else:
            return None
        if isinstance(result, ScannerError):
            log.warning("spam scanner %s failed, message not scored: %s", engine, result)
            return None  # spam scoring is advisory: a broken scanner does not hold mail back
        return result

    async def _timed(self, scanner: str, call: Awaitable[T]) -> T | ScannerError:
        self.metrics.count_check(scanner)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(SCAN_TIMEOUT):
                return await call
        except (ScannerError, TimeoutError) as exc:
            self.metrics.scanner_errors.labels(scanner).inc()
            return exc if isinstance(exc, ScannerError) else ScannerError(f"{scanner} timed out")
        finally:
            self.metrics.scanner_latency.labels(scanner).observe(time.perf_counter() - started)

    # --- what the headers are made of ------------------------------------------------------------

    async def _spf_for_headers(self, facts: Facts, envelope: Envelope) -> SpfResult | None:
        if not spf_applies(self.policy.ip_authority.spf, facts.client_ip, self.trusted):
            return None
        return await self.lookups.spf(facts.client_ip, envelope.mail_from, facts.helo)

    async def _headers(self, facts: Facts, envelope: Envelope, report: SpamReport | None) -> list[tuple[str, str]]:
        """X-Spam-* and Authentication-Results for the spam engine's report and the tags of SPF and DNSBL."""
        if self.compose_headers is None:
            return []
        spf = await self._spf_for_headers(facts, envelope)
        tags: list[str] = []
        if (
            spf is not None
            and spf_verdict(spf, self.policy.ip_authority.spf) is not None
            and spf.result in ("fail", "softfail")
        ):
            tags.append(f"SPF_{spf.result.upper()}")
        dnsbl = self.policy.ip_authority.dnsbl
        if dnsbl.zones and dnsbl.action == "tag":
            tags += [f"DNSBL_{listing.zone}" for listing in await self.lookups.dnsbl(facts.client_ip, dnsbl.zones)]
        return self.compose_headers(
            hostname=self.hostname,
            threshold=self.policy.spam.tag_above,
            report=report,
            spf_result=spf.result if spf is not None else None,
            mail_from=envelope.mail_from,
            helo=facts.helo,
            tags=tags,
        )
