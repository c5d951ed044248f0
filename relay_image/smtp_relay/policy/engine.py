"""The policy chain: the SMTP listener asks it at each stage whether to go on, and what to do with the message.

Each check runs at the earliest stage that has its data, so a refusal costs the client (and us) as
little as possible and reaches the sending application synchronously:

- connect: DNSBL of the client IP, concurrent connections per client;
- MAIL: verified sender domain, rate limits (early refusal), SPF (needs MAIL FROM, HELO and the IP);
- RCPT: recipient syntax, recipient domain can receive mail;
- end of DATA: blocked attachments, virus, spam, and the rate limits again, now counting the message.
- AUTH: the failure throttle (`before_auth`, `auth_failed`, `auth_succeeded`).

The decisions themselves are the pure functions of the check modules; this class only does the I/O
with timeouts, remembers per-session results that later stages need (the SPF result and DNSBL tags
feed the spam headers at DATA), counts metrics, and applies `policy.mode: audit` (decide, log and
count, but accept).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from email.message import Message
from typing import TypeVar

import dns.asyncresolver

from smtp_relay.cleanup.headers import HeaderInjectionError, authentication_results, spam_headers, spf_resinfo
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.delivery.router import choose_route
from smtp_relay.model.envelope import Envelope, domain_of
from smtp_relay.policy.admission import (
    ACCEPT,
    Action,
    Facts,
    NetworkList,
    Verdict,
    defer,
    ip_in,
    parse_networks,
    reject,
)
from smtp_relay.policy.dnsbl import Listing, dnsbl_listings, dnsbl_verdict
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.mime import inspect_attachments, parse_message
from smtp_relay.policy.quarantine import QuarantineStore
from smtp_relay.policy.ratelimit import AuthThrottle, ConnectionLimiter, RateLimiter
from smtp_relay.policy.recipients import recipient_domain_exists, recipient_domain_verdict, recipient_syntax_verdict
from smtp_relay.policy.scanners import ClamdClient, RspamdClient, ScannerError, SpamdClient, VirusResult, split_address
from smtp_relay.policy.spam_builtin import SpamReport, score_builtin
from smtp_relay.policy.spf import SpfResult, check_spf, spf_verdict
from smtp_relay.policy.util import TtlCache, reply_text

log = logging.getLogger(__name__)

T = TypeVar("T")

DNS_TIMEOUT = 6.0
"""Upper bound for a DNSBL or recipient-domain lookup (the resolver's own lifetime is 5 s)."""
SPF_TIMEOUT = 10.0
"""Upper bound for one SPF evaluation, all its lookups included (a slow one is a temperror)."""
SCAN_TIMEOUT = 30.0
"""Upper bound for one clamd/rspamd/spamd call at end of DATA."""
INLINE_BYTES = 256 * 1024
"""Messages up to this size are parsed on the event loop; bigger ones in a thread, so the loop stays responsive."""
MAX_CONNECTIONS_PER_CLIENT = 50


@dataclass(frozen=True)
class DataDecision:
    """The end-of-DATA outcome: the reply, headers to prepend when accepted, and whether to quarantine."""

    verdict: Verdict
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    quarantine_reason: str | None = None
    """Set when the message is to be stored in the quarantine instead of the spool (the client gets a 250)."""
    verdicts: tuple[Verdict, ...] = ()
    """Every non-accept verdict of the checks (for the quarantine sidecar and the log)."""


@dataclass
class Scanners:
    """The external scanner clients of one config (None: engine off or builtin)."""

    clamd: ClamdClient | None = None
    rspamd: RspamdClient | None = None
    spamd: SpamdClient | None = None

    @classmethod
    def from_spec(cls, spec: SmtpRelaySpec, timeout: float = SCAN_TIMEOUT) -> Scanners:
        policy = spec.policy
        scanners = cls()
        if policy.virus.engine == "clamd":
            scanners.clamd = ClamdClient(*split_address(policy.virus.address), timeout=timeout)
        if policy.spam.engine == "rspamd":
            scanners.rspamd = RspamdClient(*split_address(policy.spam.address), timeout=timeout)
        elif policy.spam.engine == "spamassassin":
            scanners.spamd = SpamdClient(*split_address(policy.spam.address), timeout=timeout)
        return scanners

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.close()


class PolicyEngine:
    """The policy chain of one relay; `update` swaps in a new config without losing counters and caches."""

    def __init__(
        self,
        config: RelayConfig | SmtpRelaySpec,
        resolver: dns.asyncresolver.Resolver,
        *,
        hostname: str,
        metrics: PolicyMetrics,
        quarantine: QuarantineStore | None = None,
        scanners: Scanners | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        auth_throttle: AuthThrottle | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.resolver = resolver
        self.hostname = hostname
        self.metrics = metrics
        self.quarantine_store = quarantine
        self._clock = clock
        self._sleep = sleep
        self.connections = ConnectionLimiter(max_connections_per_client)
        self.auth_throttle = auth_throttle or AuthThrottle(clock=clock)
        self.verified_domains: Collection[str] | None = None
        """Domains with a verified SendingDomain (set by the operator side); None: not known yet."""
        self._spf_cache: TtlCache[tuple[str, str, str], SpfResult] = TtlCache(600, clock=clock)
        self._dnsbl_cache: TtlCache[str, tuple[Listing, ...]] = TtlCache(300, clock=clock)
        self._domain_cache: TtlCache[str, bool] = TtlCache(300, clock=clock)
        self._apply(config, scanners)

    def _apply(self, config: RelayConfig | SmtpRelaySpec, scanners: Scanners | None) -> None:
        self.spec = config.spec if isinstance(config, RelayConfig) else config
        self.policy = self.spec.policy
        self.audit = self.policy.mode == "audit"
        self.trusted: NetworkList = parse_networks(self.spec.clients.allowed_networks)
        old = getattr(self, "rate_limiter", None)
        if old is None or old.limits != list(self.policy.rate_limits):
            self.rate_limiter = RateLimiter(self.policy.rate_limits, self._clock)
        self.scanners = scanners if scanners is not None else Scanners.from_spec(self.spec)

    async def update(
        self, config: RelayConfig | SmtpRelaySpec, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        """Reload: new settings and scanner clients; rate-limit counters survive unless the limits changed."""
        old_scanners = self.scanners
        if resolver is not None:
            self.resolver = resolver
        self._apply(config, None)
        await old_scanners.close()

    async def close(self) -> None:
        await self.scanners.close()

    # --- bookkeeping ------------------------------------------------------------------------------

    def _decide(self, check: str, verdict: Verdict | None, facts: Facts | None = None) -> Verdict | None:
        """Count a check and its verdict; in audit mode log what would have happened and return None."""
        self.metrics.count_check(check)
        if verdict is None or verdict.action is Action.ACCEPT:
            return None
        self.metrics.count_verdict(check, verdict.action.value)
        client = facts.client_ip if facts is not None else "-"
        if self.audit:
            self.metrics.audited.labels(check, verdict.action.value).inc()
            log.info("policy audit: %s would %s client %s: %s", check, verdict.action.value, client, verdict.reply)
            return None
        log.info("policy: %s %s client %s: %s", check, verdict.action.value, client, verdict.reply)
        return verdict

    @staticmethod
    async def _bounded(awaitable: Awaitable[T], seconds: float, fallback: T) -> T:
        try:
            async with asyncio.timeout(seconds):
                return await awaitable
        except TimeoutError:
            return fallback

    # --- connect ----------------------------------------------------------------------------------

    async def on_connect(self, facts: Facts) -> Verdict:
        """DNSBL, then the per-client connection limit (not for allowedNetworks: those are our own clients).

        A connection counts as open exactly when the verdict does not refuse; call `on_disconnect` for those.
        """
        verdict = await self._check_dnsbl(facts)
        if verdict is not None and verdict.refuses:
            return verdict
        if not ip_in(facts.client_ip, self.trusted):
            refused = self.connections.acquire(facts.client_ip)
            decided = self._decide("connection_limit", refused, facts)
            if decided is not None:
                return decided
            if refused is not None:  # audit mode: accepted, so it must be counted like any open connection
                self.connections.acquire(facts.client_ip, force=True)
        return verdict or ACCEPT

    def on_disconnect(self, facts: Facts) -> None:
        if not ip_in(facts.client_ip, self.trusted):
            self.connections.release(facts.client_ip)

    async def _listings(self, client_ip: str) -> tuple[Listing, ...]:
        cached = self._dnsbl_cache.get(client_ip)
        if cached is not None:
            return cached
        zones = self.policy.ip_authority.dnsbl.zones
        listings = tuple(await self._bounded(dnsbl_listings(self.resolver, client_ip, zones), DNS_TIMEOUT, []))
        self._dnsbl_cache.put(client_ip, listings)
        return listings

    async def _check_dnsbl(self, facts: Facts) -> Verdict | None:
        dnsbl = self.policy.ip_authority.dnsbl
        if not dnsbl.zones:
            return None
        listings = await self._listings(facts.client_ip)
        return self._decide("dnsbl", dnsbl_verdict(listings, dnsbl.action), facts)

    # --- AUTH -------------------------------------------------------------------------------------

    def before_auth(self, facts: Facts) -> Verdict:
        """454 4.7.0 while the client is cooling down after too many failed logins."""
        return self._decide("auth_throttle", self.auth_throttle.before_auth(facts.client_ip), facts) or ACCEPT

    async def auth_failed(self, facts: Facts) -> Verdict:
        """The reply for a failed AUTH (535 5.7.8, or 454 4.7.0 once throttled), given after the tarpit delay."""
        verdict, delay = self.auth_throttle.failure(facts.client_ip)
        if delay > 0:
            await self._sleep(delay)
        if verdict.code == 454:
            decided = self._decide("auth_throttle", verdict, facts)
            if decided is None:  # audit: the client gets the plain failure, not the throttle
                return reject(535, "5.7.8", "Authentication credentials invalid", "auth_failed")
        return verdict

    def auth_succeeded(self, facts: Facts) -> None:
        self.auth_throttle.success(facts.client_ip)

    # --- MAIL -------------------------------------------------------------------------------------

    async def on_mail(self, facts: Facts) -> Verdict:
        """Verified sender domain, rate limits (no room left: 451 4.7.1), SPF.

        SPF runs here because MAIL FROM is its identity and nothing later adds to it: a fail refuses the
        transaction before any recipient or data is sent.
        """
        mail_from = facts.mail_from or ""
        for check, verdict in (
            ("sender_verified", self._verified_sender_verdict(mail_from)),
            ("ratelimit", self.rate_limiter.check(facts.client_ip, facts.auth_user, facts.mail_from)),
        ):
            decided = self._decide(check, verdict, facts)
            if decided is not None and decided.refuses:
                return decided
        if not self._spf_applies(facts):
            return ACCEPT
        result = await self.spf_result(facts.client_ip, mail_from, facts.helo)
        decided = self._decide("spf", spf_verdict(result, self.policy.ip_authority.spf), facts)
        return decided or ACCEPT

    def _verified_sender_verdict(self, mail_from: str) -> Verdict | None:
        if not self.spec.senders.require_verified_domain or not mail_from:
            return None
        domain = domain_of(mail_from).rstrip(".")
        if self.verified_domains is None:
            return defer(451, "4.7.1", "Sender domain verification status unknown, try again later", "sender_verified")
        if domain in self.verified_domains:
            return None
        return reject(553, "5.7.1", f"Sender domain {reply_text(domain)} is not verified", "sender_verified")

    async def spf_result(self, client_ip: str, mail_from: str, helo: str) -> SpfResult:
        """SPF for this identity, from the session cache when MAIL already evaluated it."""
        key = (client_ip, mail_from.lower(), helo.lower())
        cached = self._spf_cache.get(key)
        if cached is not None:
            return cached
        timeout = SpfResult("temperror", "SPF evaluation timed out", "mailfrom" if mail_from else "helo")
        result = await self._bounded(
            check_spf(self.resolver, client_ip, mail_from, helo, query_time=SPF_TIMEOUT), SPF_TIMEOUT + 2, timeout
        )
        if result.result != "temperror":
            self._spf_cache.put(key, result)
        return result

    # --- RCPT -------------------------------------------------------------------------------------

    async def on_rcpt(self, facts: Facts) -> Verdict:
        """Recipient syntax (501 5.1.3), then whether its domain can receive mail at all (550 5.1.2).

        The domain is looked up only for recipients that this relay itself delivers to their MX: a
        smarthost may know domains public DNS does not (internal ones), and captured mail goes nowhere.
        """
        rcpt = facts.rcpt or ""
        decided = self._decide("rcpt_syntax", recipient_syntax_verdict(rcpt), facts)
        if decided is not None:
            return decided
        domain = domain_of(rcpt.strip("<>")).rstrip(".")
        if not domain or choose_route(self.spec.routing, facts.mail_from or "", rcpt).kind != "mx":
            return ACCEPT  # "postmaster" has no domain to look up; other routes decide downstream
        exists = self._domain_cache.get(domain)
        if exists is None:
            exists = await self._bounded(recipient_domain_exists(self.resolver, domain), DNS_TIMEOUT, None)
            if exists is not None:
                self._domain_cache.put(domain, exists, ttl=300 if exists else 60)
        return self._decide("rcpt_domain", recipient_domain_verdict(domain, exists), facts) or ACCEPT

    # --- end of DATA ------------------------------------------------------------------------------

    async def on_data(self, facts: Facts, data: bytes, envelope: Envelope) -> DataDecision:
        """Attachments, virus and spam (scanners run concurrently), then the rate limits count the message.

        The first refusal decides, in that order; a quarantine action holds the message unless a later
        check refuses it outright. Tags (spam score, SPF fail or DNSBL in tag mode) become X-Spam-* and
        Authentication-Results headers.
        """
        fired: list[Verdict] = []
        refusal: Verdict | None = None
        quarantine: str | None = None

        def note(check: str, verdict: Verdict | None, quarantine_reason: str | None = None) -> None:
            nonlocal refusal, quarantine
            if verdict is not None:
                fired.append(verdict)
            if quarantine_reason is None:
                decided = self._decide(check, verdict, facts)
                if decided is not None and decided.refuses and refusal is None:
                    refusal = decided
                return
            self.metrics.count_check(check)
            self.metrics.count_verdict(check, "quarantine")
            if self.audit:
                self.metrics.audited.labels(check, "quarantine").inc()
                log.info("policy audit: %s would quarantine client %s: %s", check, facts.client_ip, quarantine_reason)
            elif quarantine is None:
                log.info("policy: %s quarantines client %s: %s", check, facts.client_ip, quarantine_reason)
                quarantine = quarantine_reason

        def hold_or_reject(check: str, action: str, text: str, held_for: str) -> None:
            """A malware finding: quarantine (the client gets 250) or refuse with 554 5.7.1, as the spec says."""
            if action == "quarantine":
                note(check, Verdict(Action.TAG, 250, "2.7.0", text, check), held_for)
            else:
                note(check, reject(554, "5.7.1", text, check))

        attachments = self.policy.attachments
        # Parse once for both local content checks: parsing is most of their cost.
        parsed = (
            await self._cpu(len(data), lambda: parse_message(data))
            if attachments.enabled or self.policy.spam.engine == "builtin"
            else None
        )
        finding = (
            await self._cpu(len(data), lambda: inspect_attachments(data, attachments, parsed=parsed))
            if attachments.enabled
            else None
        )
        if finding is not None:
            what = f"{finding.filename} ({finding.reason}: {finding.detail})" if finding.filename else finding.detail
            text = f"Message rejected: blocked attachment {reply_text(what, 200)}"
            hold_or_reject("attachments", attachments.action, text, f"attachment: {what}")
        elif attachments.enabled:
            note("attachments", None)

        scan_everything = self.audit or refusal is None
        virus_task = self._scan_virus(data) if scan_everything and self.scanners.clamd is not None else None
        spam_task = (
            self._score_spam(facts, data, envelope, parsed)
            if scan_everything and self.policy.spam.engine != "off"
            else None
        )
        virus: VirusResult | ScannerError | None = None
        spam: SpamReport | ScannerError | None = None
        if virus_task is not None and spam_task is not None:
            virus, spam = await asyncio.gather(virus_task, spam_task)  # the scanners work concurrently
        elif virus_task is not None:
            virus = await virus_task
        elif spam_task is not None:
            spam = await spam_task

        if isinstance(virus, ScannerError):
            if self.policy.virus.on_scanner_error == "defer":
                note("virus", defer(451, "4.3.0", "Virus scanner unavailable, try again later", "virus_scanner"))
            else:
                log.warning("virus scanner failed, accepting unscanned (onScannerError: accept): %s", virus)
                note("virus", None)
        elif isinstance(virus, VirusResult):
            if virus.infected:
                signature = reply_text(virus.signature or "unknown", 100)
                text = f"Message rejected: virus found ({signature})"
                hold_or_reject("virus", self.policy.virus.action, text, f"virus: {signature}")
            else:
                note("virus", None)

        spam_spec = self.policy.spam
        report = spam if isinstance(spam, SpamReport) else None
        if report is not None:
            if report.score > spam_spec.reject_above:
                text = f"Message rejected as spam (score {report.score:.1f} > {spam_spec.reject_above:.1f})"
                note("spam", reject(550, "5.7.1", text, "spam"))
            elif report.score > spam_spec.tag_above:
                note("spam", Verdict(Action.TAG, 250, "2.7.1", f"spam score {report.score:.1f}", "spam"))
            else:
                note("spam", None)

        if refusal is None:
            over = self.rate_limiter.check(facts.client_ip, facts.auth_user, envelope.mail_from, cost=1)
            decided = self._decide("ratelimit", over, facts)
            if decided is not None:
                fired.append(decided)
                refusal = decided

        if refusal is not None:
            return DataDecision(refusal, [], None, tuple(fired))
        if self.audit:
            return DataDecision(ACCEPT, [], None, tuple(fired))
        headers = await self._headers(facts, envelope, report)
        return DataDecision(ACCEPT, headers, quarantine, tuple(fired))

    async def _cpu(self, size: int, func: Callable[[], T]) -> T:
        """Run a CPU-bound check inline for small messages, in a thread for big ones."""
        if size <= INLINE_BYTES:
            return func()
        return await asyncio.to_thread(func)

    async def _scan_virus(self, data: bytes) -> VirusResult | ScannerError:
        clamd = self.scanners.clamd
        assert clamd is not None
        return await self._timed("clamd", clamd.scan(data))

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

    def _spf_applies(self, facts: Facts) -> bool:
        """SPF asks whether the client IP may send for the sender's domain. Clients in allowedNetworks
        are the platform's own applications, whose pod IPs no domain's SPF lists: the allowedNetworks
        declaration is their authority, so SPF is checked for everyone else (authenticated users)."""
        return (
            self.policy.ip_authority.spf != "off" and bool(facts.client_ip) and not ip_in(facts.client_ip, self.trusted)
        )

    async def _spf_for_headers(self, facts: Facts, envelope: Envelope) -> SpfResult | None:
        if not self._spf_applies(facts):
            return None
        return await self.spf_result(facts.client_ip, envelope.mail_from, facts.helo)

    async def _headers(self, facts: Facts, envelope: Envelope, report: SpamReport | None) -> list[tuple[str, str]]:
        """X-Spam-* and Authentication-Results for the spam engine's report and the tags of SPF and DNSBL."""
        spf = await self._spf_for_headers(facts, envelope)
        resinfo = [spf_resinfo(spf.result, envelope.mail_from, helo=facts.helo)] if spf is not None else []
        tags: list[str] = []
        if (
            spf is not None
            and spf_verdict(spf, self.policy.ip_authority.spf) is not None
            and spf.result in ("fail", "softfail")
        ):
            tags.append(f"SPF_{spf.result.upper()}")
        dnsbl = self.policy.ip_authority.dnsbl
        if dnsbl.zones and dnsbl.action == "tag":
            tags += [f"DNSBL_{listing.zone}" for listing in await self._listings(facts.client_ip)]
        try:
            if report is None:  # no spam score (engine off or failed): only what SPF and DNSBL say
                if not tags and not resinfo:
                    return []
                flag = [("X-Spam-Flag", "YES")] if tags else []
                return [*flag, ("Authentication-Results", authentication_results(self.hostname, resinfo=resinfo))]
            report = dataclasses.replace(report, symbols=tuple(dict.fromkeys((*report.symbols, *tags))))
            headers = spam_headers(
                report, threshold=self.policy.spam.tag_above, hostname=self.hostname, auth_results=resinfo
            )
        except HeaderInjectionError as exc:
            log.warning("policy headers not added: %s", exc)
            return []
        if tags and not any(name == "X-Spam-Flag" for name, _ in headers):
            # Tagged by SPF or a blocklist whatever the score: the recipient's filter keys on the flag.
            headers = [("X-Spam-Flag", "YES")] + [
                (name, value.replace("No,", "Yes,", 1) if name == "X-Spam-Status" else value) for name, value in headers
            ]
        return headers

    async def quarantine(self, envelope: Envelope, data: bytes, decision: DataDecision) -> str:
        """Store a message whose decision has a quarantine_reason; returns its quarantine id."""
        if self.quarantine_store is None or decision.quarantine_reason is None:
            raise ValueError("no quarantine store, or the decision does not quarantine")
        return await asyncio.to_thread(
            self.quarantine_store.put, envelope, data, decision.quarantine_reason, [v.reply for v in decision.verdicts]
        )
