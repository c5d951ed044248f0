"""Delivery of spooled messages along `spec.routing`: smarthosts (pooled, failover), direct MX, or capture.

Recipients are grouped per destination and the destinations run in parallel; each reports one
`Outcome` per recipient. A smarthost that cannot take the transaction at all hands it to the next;
the MX hosts of a domain are tried in preference order. All host names are resolved through the
relay's own resolver, so `spec.dns` is honoured and the TLS name stays the configured host name.
A shaped destination's transaction goes through the `ShapingGate` (delivery/gate.py): a smarthost route as a
whole, an mx route per MX site once the MX hosts are known; an unshaped one takes the plain path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.asyncresolver

from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import CaptureSpec, Destination, MxSpec, Smarthost
from smtp_relay.delivery.capture import write_capture
from smtp_relay.delivery.connection import Connection, HostFailed, client_tls_context, connect
from smtp_relay.delivery.gate import ShapingGate, SharedPacing, site_of
from smtp_relay.delivery.pool import PROBE_IDLE, ConnectionPool, HostKey, host_key
from smtp_relay.delivery.resolver import DnsError, NullMxError, PermanentDnsError, lookup_mx, resolve_host
from smtp_relay.delivery.router import group_by_route, route_label
from smtp_relay.delivery.shaper import Limits, destination_limits, limits_of
from smtp_relay.delivery.transaction import StaleConnection, combined_failure, run_transaction
from smtp_relay.model.envelope import Envelope, Outcome, OutcomeKind, StoredMessage, domain_of
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)


class Deliverer:
    """Delivers messages along `spec.routing` and reports one outcome per recipient."""

    def __init__(
        self,
        config: RelayConfig,
        resolver: dns.asyncresolver.Resolver,
        spool_root: Path,
        *,
        hostname: str,
        metrics: RelayMetrics | None = None,
        pool_size: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._resolver = resolver
        self._spool_root = spool_root
        self._hostname = hostname
        self._metrics = metrics
        self._pool_size = pool_size
        self._timeout = timeout
        self._pools: dict[HostKey, ConnectionPool] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._mx_context: ssl.SSLContext | None = None
        self._shaping = destination_limits(config.spec.routing)
        self._gate = ShapingGate(metrics)

    # -- public API ---------------------------------------------------------------------------------

    async def deliver(self, message: StoredMessage, data: bytes, recipients: list[str]) -> dict[str, Outcome]:
        """Deliver `data` to `recipients`, one transaction per destination, destinations in parallel."""
        envelope = message.envelope
        groups = group_by_route(self._config.spec.routing, envelope.mail_from, recipients)
        if len(groups) == 1:  # the common case: no task per destination
            results = [await self._deliver_group(groups[0][0], envelope, data, groups[0][1])]
        else:
            results = await asyncio.gather(
                *(self._deliver_group(destination, envelope, data, members) for destination, members in groups)
            )
        outcomes: dict[str, Outcome] = {}
        for (destination, _), result in zip(groups, results, strict=True):
            outcomes.update(result)
            delivered = sum(1 for o in result.values() if o.kind is OutcomeKind.DELIVERED)
            if self._metrics is not None and delivered:
                self._metrics.delivered.labels(route=route_label(destination)).inc(delivered)
        for recipient, outcome in outcomes.items():
            if outcome.kind is not OutcomeKind.DELIVERED and outcome.kind is not OutcomeKind.SHAPED:
                log.info(
                    "%s to=<%s> %s %s %s: %s",
                    message.id,
                    recipient,
                    outcome.kind.value,
                    outcome.remote or "-",
                    outcome.code,
                    outcome.message,
                )
        return outcomes

    def pace_with(self, source: Callable[[], SharedPacing | None]) -> None:
        """Where the shaping rates are paced: `source()` is the fleet's pacing (spec.limits.backend redis), or
        None for per process; asked at each admission, so it follows reloads."""
        self._gate.pacing_source = source

    def update(self, config: RelayConfig) -> None:
        """Take a reloaded config; pools whose host, TLS, CA or credentials changed are retired."""
        self._config = config
        self._shaping = destination_limits(config.spec.routing)
        wanted = {host_key(config, host) for host in self._all_smarthosts()}
        for key in [k for k in self._pools if k not in wanted]:
            pool = self._pools.pop(key)
            self._retire(pool)

    async def close(self) -> None:
        """Close every pooled connection (QUIT); connections in use close when their transaction ends."""
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.retire() for pool in pools))
        await asyncio.gather(*self._retiring)
        await asyncio.sleep(0)  # let the transports just closed release their sockets (one loop pass)

    # -- routing ------------------------------------------------------------------------------------

    async def _deliver_group(
        self, destination: Destination, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        shaping = limits_of(self._shaping, destination)
        hosts = destination.smarthosts
        if hosts is not None:
            if shaping is None:
                return await self._via_smarthosts(hosts, envelope, data, recipients)
            name, limits = shaping
            return await self._gate.run(
                name, limits, recipients, lambda: self._via_smarthosts(hosts, envelope, data, recipients, limits)
            )
        if destination.mx is not None:
            return await self._via_mx(destination.mx, envelope, data, recipients, shaping)
        return await self._via_capture(destination.capture or CaptureSpec(), envelope, data, recipients)

    async def _via_capture(
        self, capture: CaptureSpec, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        only_these = dataclasses.replace(envelope, rcpt_tos=tuple(recipients))
        try:
            path = await asyncio.to_thread(write_capture, self._spool_root, capture.folder, data, only_these)
        except OSError as exc:
            outcome = Outcome.temporary(451, f"4.3.0 capture write failed: {exc}", "capture")
            return dict.fromkeys(recipients, outcome)
        return dict.fromkeys(recipients, Outcome.delivered("capture", f"2.0.0 captured as {path.name}"))

    # -- smarthosts ---------------------------------------------------------------------------------

    def _all_smarthosts(self) -> list[Smarthost]:
        routing = self._config.spec.routing
        return [h for d in (routing.default, *routing.routes) for h in (d.smarthosts or [])]

    def _pool(self, host: Smarthost, limits: Limits | None) -> ConnectionPool:
        """The host's pool; a shaped route's maxConnections sizes it (else the relay's pool size)."""
        key = host_key(self._config, host)
        pool = self._pools.get(key)
        if pool is None:
            size = self._pool_size if limits is None else limits.max_connections
            pool = self._pools[key] = ConnectionPool.for_host(key, host, self._config, size)
        return pool

    def _retire(self, pool: ConnectionPool) -> None:
        """Retire a pool whose settings changed; its idle connections are closed in the background."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # update() outside the loop: nothing can be awaited
            pool.retire_without_quit()
            return
        pool.retired = True
        task = loop.create_task(pool.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _via_smarthosts(
        self,
        hosts: Sequence[Smarthost],
        envelope: Envelope,
        data: bytes,
        recipients: list[str],
        limits: Limits | None = None,
    ) -> dict[str, Outcome]:
        """Try each smarthost in order until one runs the transaction (failover on host-level failure)."""
        failures: list[Outcome] = []
        reuse = None if limits is None else limits.max_messages_per_connection
        for host in hosts:
            try:
                return await self._smarthost_transaction(self._pool(host, limits), envelope, data, recipients, reuse)
            except HostFailed as exc:
                log.warning("smarthost %s:%s failed: %s", host.host, host.port, exc.outcome.message)
                failures.append(exc.outcome)
        return dict.fromkeys(recipients, combined_failure(failures))

    async def _smarthost_transaction(
        self, pool: ConnectionPool, envelope: Envelope, data: bytes, recipients: list[str], reuse: int | None = None
    ) -> dict[str, Outcome]:
        """One transaction on a pooled connection; one that carried `reuse` transactions is closed (QUIT)."""
        async with pool.slots:
            conn = pool.take_idle()
            if conn is not None and time.monotonic() - conn.last_used > PROBE_IDLE and not await conn.probe():
                conn.smtp.close()
                conn = None
            reused = conn is not None
            if conn is None:
                conn = await self._open_smarthost(pool)
            try:
                try:
                    result = await run_transaction(conn, envelope, data, recipients, self._timeout)
                    conn.transactions += 1
                    if reuse is not None and conn.transactions >= reuse:
                        # QUIT while the slot is held, so a new connection cannot open before this one closes
                        await conn.quit()  # closed: release() will not pool it
                    return result
                except BaseException as exc:
                    if not isinstance(exc, StaleConnection):
                        conn.smtp.close()  # cancelled or failed mid-dialogue: never pool a desynced session
                        raise
                    if not reused:
                        raise HostFailed(Outcome.temporary(0, f"connection lost: {exc}", conn.remote)) from None
                    conn = await self._open_smarthost(pool)
                    try:
                        return await run_transaction(conn, envelope, data, recipients, self._timeout)
                    except StaleConnection as again:
                        raise HostFailed(Outcome.temporary(0, f"connection lost: {again}", conn.remote)) from None
                    except BaseException:
                        conn.smtp.close()
                        raise
            finally:
                pool.release(conn)

    async def _open_smarthost(self, pool: ConnectionPool) -> Connection:
        key = pool.key
        try:
            addresses = await resolve_host(self._resolver, key.host, search=True)
        except DnsError as exc:
            raise HostFailed(Outcome.temporary(0, f"4.4.3 {exc}", f"{key.host}:{key.port}")) from None
        return await connect(
            key.host,
            addresses,
            key.port,
            tls=key.tls,
            context=pool.context,
            local_hostname=self._hostname,
            timeout=self._timeout,
            credentials=pool.credentials,
        )

    # -- direct MX delivery -------------------------------------------------------------------------

    async def _via_mx(
        self,
        mx: MxSpec,
        envelope: Envelope,
        data: bytes,
        recipients: list[str],
        shaping: tuple[str, Limits] | None = None,
    ) -> dict[str, Outcome]:
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(domain_of(recipient), []).append(recipient)
        results = await asyncio.gather(
            *(self._mx_domain(mx, domain, envelope, data, members, shaping) for domain, members in by_domain.items())
        )
        return {recipient: outcome for result in results for recipient, outcome in result.items()}

    async def _mx_domain(
        self,
        mx: MxSpec,
        domain: str,
        envelope: Envelope,
        data: bytes,
        recipients: list[str],
        shaping: tuple[str, Limits] | None,
    ) -> dict[str, Outcome]:
        """Look the domain's MX hosts up; a shaped route shapes per MX site (the set of hosts)."""
        try:
            hosts = await lookup_mx(self._resolver, domain)
        except NullMxError as exc:
            return dict.fromkeys(recipients, Outcome.permanent(556, f"5.1.10 {exc}"))
        except PermanentDnsError as exc:
            return dict.fromkeys(recipients, Outcome.permanent(550, f"5.1.2 {exc}"))
        except DnsError as exc:
            return dict.fromkeys(recipients, Outcome.temporary(451, f"4.4.3 {exc}"))
        if shaping is None:
            return await self._mx_hosts(mx, hosts, envelope, data, recipients)
        name, limits = shaping
        site = f"{name}/{site_of(hosts)}"
        return await self._gate.run(
            site, limits, recipients, lambda: self._mx_hosts(mx, hosts, envelope, data, recipients)
        )

    async def _mx_hosts(
        self, mx: MxSpec, hosts: list[str], envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        """Try the MX hosts in preference order; opportunistic STARTTLS unless requireTLS."""
        if self._mx_context is None:
            self._mx_context = client_tls_context(verify=False, ca_pem=None)  # RFC 7435: opportunistic, unauthenticated
        failures: list[Outcome] = []
        for host in hosts:
            try:
                addresses = await resolve_host(self._resolver, host, search=False)
            except DnsError as exc:
                failures.append(Outcome.temporary(0, f"4.4.3 MX {exc}", f"{host}:{mx.port}"))
                continue
            try:
                conn = await connect(
                    host,
                    addresses,
                    mx.port,
                    tls="starttls",
                    context=self._mx_context,
                    local_hostname=self._hostname,
                    timeout=self._timeout,
                    opportunistic=not mx.require_tls,
                )
            except HostFailed as exc:
                failures.append(exc.outcome)
                continue
            try:
                result = await run_transaction(conn, envelope, data, recipients, self._timeout)
            except HostFailed as exc:
                failures.append(exc.outcome)
            except StaleConnection as exc:
                failures.append(Outcome.temporary(0, f"4.4.2 connection lost: {exc}", conn.remote))
            except BaseException:
                conn.smtp.close()
                raise
            else:
                await conn.quit()
                return result
            await conn.quit()
        return dict.fromkeys(recipients, combined_failure(failures))
