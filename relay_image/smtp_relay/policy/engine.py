"""The policy engine: the SMTP listener asks it at each stage whether to go on, and what to do with the message.

Each check runs at the earliest stage that has its data, so a refusal costs the client (and us) as
little as possible and reaches the sending application synchronously:

- accept: open connections per client, counted from accept to close (policy.checks.connect);
- connect: DNSBL of the client IP (policy.checks.connect);
- AUTH: the failure throttle (`before_auth`, `reserve_auth` before each password check, then
  `auth_failed`, `auth_succeeded` or `auth_abandoned`; policy.checks.auth);
- rate limits and the AUTH throttle count per process, or fleet-wide in Redis (spec.limits,
  policy.limits_fleet; built here, swapped on reload), and so do traffic shaping's rates (policy.limits_shaping,
  handed to delivery as `pacing`);
- MAIL: verified sender domain, rate limits (early refusal), SPF (policy.checks.mail);
- RCPT: recipient syntax, recipient domain can receive mail (policy.checks.rcpt);
- end of DATA: blocked attachments, virus, spam, and the rate limits again, now counting the message
  (policy.data_stage).

This class only wires them: it builds each stage's chain from the config (and again on reload),
owns the state that outlives a config (rate-limit counters, connection counts, the AUTH throttle,
the DNS caches of policy.lookups), and stores quarantined messages. Audit mode and the metrics are
applied by the chains' `Accounting`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import dns.asyncresolver

from smtp_relay.config.domains import SendingDomains
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.delivery.gate import SharedPacing
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.chain import Accounting, Chain
from smtp_relay.policy.checks import auth, connect, mail, rcpt
from smtp_relay.policy.data_stage import DataStage
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.quarantine import QuarantineStore
from smtp_relay.policy.ratelimit import (
    AuthLimits,
    AuthThrottle,
    ConnectionLimiter,
    MessageLimits,
    RateLimiter,
    divided,
    share,
)
from smtp_relay.policy.scanners import Scanners
from smtp_relay.policy.spf import SpfResult
from smtp_relay.policy.util import NetworkList, parse_networks
from smtp_relay.policy.verdict import Check, DataDecision, Facts, HeaderComposer, Verdict
from smtp_relay.telemetry.metrics import LimitsMetrics

if TYPE_CHECKING:
    from smtp_relay.policy.limits_fleet import RedisHealth


class PolicyEngine:
    """The policy chain of one relay; `update` swaps in a new config without losing counters and caches.

    `compose_headers` makes the headers of an accepted message from the policy's findings (the relay
    wires cleanup's `policy_headers`); without one, no headers are added. `workers` is the relay's
    `--workers`: with fleet-wide limits, the local fallback divides each limit by replicas x workers.
    """

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
        auth_throttle: AuthThrottle | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        compose_headers: HeaderComposer | None = None,
        workers: int = 1,
    ) -> None:
        self.hostname = hostname
        self.workers = workers
        self.limits_metrics = LimitsMetrics(metrics.registry)
        self._health: RedisHealth | None = None
        self._retired: list[RedisHealth] = []
        self.metrics = metrics
        self.quarantine_store = quarantine
        self._clock = clock
        self._sleep = sleep
        self._compose_headers = compose_headers
        self.lookups = Lookups(resolver, clock)
        self.connections = ConnectionLimiter()
        self.auth_throttle = auth_throttle or AuthThrottle(clock=clock)
        self.sending_domains: SendingDomains | None = None
        """The relay's SendingDomains (from its config, on every reload); None: not known yet."""
        self.rate_limiter: MessageLimits
        self.pacing: SharedPacing | None = None
        """Traffic shaping's rates shared by the fleet (backend redis, the same Redis); delivery asks for it at
        each admission, so a reload's new connection is used before the old one is closed."""
        self._apply(config, scanners)

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        return self.lookups.resolver

    def _apply(self, config: RelayConfig | SmtpRelaySpec, scanners: Scanners | None) -> None:
        """Settings, scanner clients and chains of a config; counters survive unless the limits changed."""
        self.spec = spec = config.spec if isinstance(config, RelayConfig) else config
        if isinstance(config, RelayConfig):
            self.sending_domains = config.sending_domains
        self.policy = policy = spec.policy
        self.audit = policy.mode == "audit"
        self.trusted: NetworkList = parse_networks(spec.clients.allowed_networks)
        self._apply_limits(config)
        self.scanners = scanners if scanners is not None else Scanners.from_spec(spec)
        self.accounting = accounting = Accounting(self.metrics, audit=self.audit)
        lookups = self.lookups

        connect_checks: list[Check] = []
        if policy.ip_authority.dnsbl.zones:
            connect_checks.append(connect.dnsbl(policy.ip_authority.dnsbl, lookups))
        self._accept = Chain(
            "connect", [connect.connection_limit(self.connections, self.trusted, spec.clients)], accounting, sync=True
        )
        mail_checks = [
            mail.sender_verified(spec.senders.require_verified_domain, self._sending_domains),
            mail.rate_limits(self.rate_limiter),
        ]
        if policy.ip_authority.spf != "off":
            mail_checks.append(mail.spf(policy.ip_authority.spf, self.trusted, lookups))
        self._connect = Chain("connect", connect_checks, accounting)
        self._auth = Chain("auth", [auth.auth_throttle(self.auth_limits)], accounting)
        self._mail = Chain("mail", mail_checks, accounting)
        self._rcpt = Chain("rcpt", [rcpt.RECIPIENT_SYNTAX, rcpt.recipient_domain(spec.routing, lookups)], accounting)
        self._data = DataStage(
            policy,
            accounting=accounting,
            metrics=self.metrics,
            scanners=self.scanners,
            rate_limiter=self.rate_limiter,
            lookups=lookups,
            trusted=self.trusted,
            hostname=self.hostname,
            compose_headers=self._compose_headers,
        )

    def _apply_limits(self, config: RelayConfig | SmtpRelaySpec) -> None:
        """The rate limiter and AUTH throttle of `spec.limits`; counters survive a reload that keeps the limits,
        the backend and (for the fallback) the share. A replaced Redis connection is closed by `update`."""
        spec = config.spec if isinstance(config, RelayConfig) else config
        limits = list(spec.policy.rate_limits)
        redis = spec.limits.redis if spec.limits.backend == "redis" else None
        processes = share(spec.replicas, self.workers)
        old: MessageLimits | None = getattr(self, "rate_limiter", None)
        if redis is None:
            self._retire_health()
            self.pacing = None
            if not isinstance(old, RateLimiter) or old.limits != limits:
                self.rate_limiter = RateLimiter(limits, self._clock)
            self.auth_limits: AuthLimits = self.auth_throttle
            return
        # Imported here: only backend redis needs the Redis connection (and hiredis).
        from smtp_relay.policy.limits_fleet import FleetAuthThrottle, FleetRateLimiter, RedisHealth
        from smtp_relay.policy.limits_redis import RedisLimits, RedisTarget
        from smtp_relay.policy.limits_shaping import FleetPacing

        credentials = config.redis_credentials if isinstance(config, RelayConfig) else None
        ca = config.cas.get(redis.ca_secret) if isinstance(config, RelayConfig) and redis.ca_secret else None
        target = RedisTarget.from_spec(
            redis, credentials.username if credentials else "", credentials.password if credentials else "", ca
        )
        namespace, name = (config.namespace, config.name) if isinstance(config, RelayConfig) else ("default", "relay")
        health = self._health
        if (
            health is None
            or health.redis.target != target
            or health.redis.prefix != RedisLimits.key_prefix(namespace, name)
        ):
            self._retire_health()
            health = self._health = RedisHealth(RedisLimits(target, namespace, name), processes, self.limits_metrics)
        if not isinstance(self.pacing, FleetPacing) or self.pacing.health is not health:
            self.pacing = FleetPacing(health)
        fallback_changed = health.processes != processes
        health.processes = processes
        self.limits_metrics.share.set(processes)
        if (
            not isinstance(old, FleetRateLimiter)
            or old.limits != limits
            or old.health is not health
            or fallback_changed
        ):
            self.rate_limiter = FleetRateLimiter(limits, health, RateLimiter(divided(limits, processes), self._clock))
        current = getattr(self, "auth_limits", None)
        if isinstance(current, FleetAuthThrottle) and current.health is health and not fallback_changed:
            return  # the fallback's failures survive a reload too
        t = self.auth_throttle
        fallback = AuthThrottle(
            max_failures=max(1, t.max_failures // processes),
            delay_after=t.delay_after,
            window=t.window,
            cooldown=t.cooldown,
            max_delay=t.max_delay,
            clock=self._clock,
        )
        self.auth_limits = FleetAuthThrottle(t, health, fallback)

    def _retire_health(self) -> None:
        if self._health is not None:
            self._retired.append(self._health)
            self._health = None

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for health in retired:
            await health.close()

    def _sending_domains(self) -> SendingDomains | None:
        return self.sending_domains

    async def update(
        self, config: RelayConfig | SmtpRelaySpec, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        """Reload: new settings and scanner clients; rate-limit counters survive unless the limits changed."""
        old_scanners = self.scanners
        if resolver is not None:
            self.lookups.resolver = resolver
        self._apply(config, None)
        await old_scanners.close()
        await self._close_retired()

    async def close(self) -> None:
        await self.scanners.close()
        self._retire_health()
        await self._close_retired()

    # --- the stages (each returns the chain's coroutine itself: no extra one per command) ------------

    def connection_opened(self, client_ip: str) -> None:
        """Count a connection of this client; the listener calls it at accept (after the PROXY header, if any)."""
        self.connections.opened(client_ip)

    def connection_closed(self, client_ip: str) -> None:
        """Uncount a connection once its socket is closed, however far it got."""
        self.connections.closed(client_ip)

    def on_accept(self, facts: Facts) -> Verdict:
        """The per-client connection limit (allowedNetworks: their own, larger one), before any TLS handshake."""
        return self._accept.run_sync(facts)

    def on_connect(self, facts: Facts) -> Coroutine[Any, Any, Verdict]:
        """DNSBL, before the greeting."""
        return self._connect.run(facts)

    def before_auth(self, facts: Facts) -> Coroutine[Any, Any, Verdict]:
        """454 4.7.0 while the client is cooling down or has no attempts left, before the AUTH exchange."""
        return self._auth.run(facts)

    async def reserve_auth(self, facts: Facts) -> Verdict:
        """Just before a password check: reserve it, or refuse (454 4.7.0) without checking.

        A reserved check must be settled by `auth_failed`, `auth_succeeded` or `auth_abandoned`.
        """
        return await auth.reserve_attempt(self.auth_limits, facts, self.accounting)

    async def auth_failed(self, facts: Facts, username: str) -> Verdict:
        """The reply for a failed AUTH (535 5.7.8, or 454 4.7.0 once throttled), given after the tarpit delay."""
        return await auth.failed_login(self.auth_limits, facts, username, self.accounting, self._sleep)

    async def auth_succeeded(self, facts: Facts, username: str) -> None:
        """Forget this username's failures from this address (only these)."""
        await self.auth_limits.succeeded(facts.client_ip, username)

    def auth_abandoned(self, facts: Facts, username: str) -> None:
        """The client left while its password was being checked: the attempt counts as failed (it was paid for)."""
        self.auth_limits.abandoned(facts.client_ip, username)

    def on_mail(self, facts: Facts) -> Coroutine[Any, Any, Verdict]:
        """Verified sender domain, rate limits (no room left: 451 4.7.1), SPF."""
        return self._mail.run(facts)

    def on_rcpt(self, facts: Facts) -> Coroutine[Any, Any, Verdict]:
        """Recipient syntax (501 5.1.3), then whether its domain can receive mail at all (550 5.1.2)."""
        return self._rcpt.run(facts)

    def on_data(self, facts: Facts, data: bytes, envelope: Envelope) -> Coroutine[Any, Any, DataDecision]:
        """Attachments, virus, spam, then the rate limits count the message (see policy.data_stage)."""
        return self._data.run(facts, data, envelope)

    async def spf_result(self, client_ip: str, mail_from: str, helo: str) -> SpfResult:
        """SPF for this identity, from the session cache when MAIL already evaluated it."""
        return await self.lookups.spf(client_ip, mail_from, helo)

    async def quarantine(self, envelope: Envelope, data: bytes, decision: DataDecision) -> str:
        """Store a message whose decision has a quarantine_reason; returns its quarantine id."""
        if self.quarantine_store is None or decision.quarantine_reason is None:
            raise ValueError("no quarantine store, or the decision does not quarantine")
        return await asyncio.to_thread(
            self.quarantine_store.put, envelope, data, decision.quarantine_reason, [v.reply for v in decision.verdicts]
        )
