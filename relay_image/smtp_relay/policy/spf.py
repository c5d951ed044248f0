"""SPF (RFC 7208): may the client IP send for the MAIL FROM domain (or the HELO name for the null sender)?

The RFC logic (macros, include/redirect, the 10-lookup and 2-void-lookup limits, explanations) comes
from pyspf, a long-standing implementation used by postfix-policyd-spf; only its DNS layer is replaced
so every SPF lookup goes through the relay's one resolver (`spec.dns`, with its cache) and never through
the system's. pyspf is synchronous, so a check runs in a worker thread whose lookups are handed back to
the event loop's resolver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal, get_args

import dns.asyncresolver
import dns.exception
import dns.resolver
import spf

from smtp_relay.policy.util import NetworkList, ip_in, reply_text
from smtp_relay.policy.verdict import Action, Verdict, defer, reject

log = logging.getLogger(__name__)

SpfResultName = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
SpfMode = Literal["off", "tag", "reject"]
_RESULTS: dict[str, SpfResultName] = {name: name for name in get_args(SpfResultName)}

QUERY_TIME = 10.0
"""Seconds for one whole SPF evaluation, all lookups included (RFC 7208 4.6.4 asks for at least 20 s
in general; an SMTP client waiting at MAIL should not wait that long, and a slow answer is a temperror)."""

_WORKERS = 16
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_bridge = threading.local()
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}\.?$")


@dataclass(frozen=True)
class SpfResult:
    """The RFC 7208 result and pyspf's explanation (the domain's exp= text for a fail, when it has one)."""

    result: SpfResultName
    explanation: str
    identity: Literal["mailfrom", "helo"] = "mailfrom"
    """Which identity was checked: the MAIL FROM domain, or the HELO name for the null sender."""
    domain: str = ""


@dataclass(frozen=True)
class _Bridge:
    resolver: dns.asyncresolver.Resolver
    loop: asyncio.AbstractEventLoop


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = QUERY_TIME) -> list[tuple[Any, Any]]:
    """pyspf's DNSLookup contract, answered by the relay's async resolver on the event loop.

    Returns [((name, qtype), value), ...]; NXDOMAIN and NODATA are empty answers (pyspf counts void
    lookups itself); timeouts and server failures raise TempError, which pyspf turns into temperror.
    """
    bridge: _Bridge | None = getattr(_bridge, "current", None)
    if bridge is None:
        # Never fall back to the system resolver: only the relay's resolver may be asked.
        raise spf.TempError("DNS lookup outside of check_spf (no relay resolver)")
    coro = bridge.resolver.resolve(name, qtype, search=False, lifetime=max(timeout, 0.1))
    future = asyncio.run_coroutine_threadsafe(coro, bridge.loop)
    try:
        answer = future.result(timeout=max(timeout, 0.1) + 1.0)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise spf.TempError(f"DNS {qtype} lookup of {name} timed out") from None
    except concurrent.futures.CancelledError:
        raise spf.TempError(f"DNS {qtype} lookup of {name} cancelled") from None
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {qtype} lookup of {name} failed: {exc}") from None
    out: list[tuple[Any, Any]] = []
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))  # pyspf joins the character-strings of one record
    return out


spf.DNSLookup = _lookup  # process-wide: pyspf must never ask any other resolver


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """A pool of its own, so slow SPF checks cannot starve the loop's default executor (spool fsyncs)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(_WORKERS, thread_name_prefix="spf")
        return _executor


def _run(query: Any, bridge: _Bridge) -> tuple[str, int, str]:
    _bridge.current = bridge
    try:
        result: tuple[str, int, str] = query.check()
        return result
    finally:
        _bridge.current = None


def _is_domain(name: str) -> bool:
    return bool(_DOMAIN.match(name))


async def check_spf(
    resolver: dns.asyncresolver.Resolver, client_ip: str, mail_from: str, helo: str, *, query_time: float = QUERY_TIME
) -> SpfResult:
    """Evaluate SPF for the envelope sender (RFC 7208 2.4) or, for the null sender, the HELO name (2.3).

    A HELO that is no domain name (an address literal, a bare word) gives "none", as the RFC says.
    """
    identity: Literal["mailfrom", "helo"] = "mailfrom" if mail_from else "helo"
    domain = (mail_from.rpartition("@")[2] if mail_from else helo).strip().rstrip(".").lower()
    if not _is_domain(domain):
        return SpfResult("none", f"no SPF identity: {domain or 'empty'} is not a domain name", identity, domain)
    try:
        ip = ipaddress.ip_address(client_ip.strip("[]"))
    except ValueError:
        return SpfResult("none", f"no client IP address ({client_ip!r})", identity, domain)
    query = spf.query(i=str(ip), s=mail_from, h=helo if helo else domain, querytime=query_time)
    bridge = _Bridge(resolver, asyncio.get_running_loop())
    name, _code, explanation = await asyncio.get_running_loop().run_in_executor(_pool(), _run, query, bridge)
    result = _RESULTS.get(name)
    if result is None:  # pyspf's "ambiguous" only exists in its harsh mode
        log.warning("SPF for %s gave unexpected result %r: %s", domain, name, explanation)
        result = "permerror"
    return SpfResult(result, explanation, identity, domain)


def spf_applies(mode: SpfMode, client_ip: str, trusted: NetworkList) -> bool:
    """SPF asks whether the client IP may send for the sender's domain. Clients in allowedNetworks
    are the platform's own applications, whose pod IPs no domain's SPF lists: the allowedNetworks
    declaration is their authority, so SPF is checked for everyone else (authenticated users)."""
    return mode != "off" and bool(client_ip) and not ip_in(client_ip, trusted)


def spf_verdict(result: SpfResult, mode: SpfMode) -> Verdict | None:
    """What an SPF result does under `policy.ipAuthority.spf`.

    fail rejects (550 5.7.23, RFC 7372) only in reject mode, and is tagged in tag mode; softfail is only
    ever tagged, since the domain itself says it is not sure; temperror defers (451 4.7.24) in reject mode
    so the client retries once DNS is back. permerror (a broken record) and pass/neutral/none give no
    verdict: the result still goes into Authentication-Results and the spam score.
    """
    if mode == "off":
        return None
    explanation = reply_text(result.explanation, 200)
    if result.result == "fail":
        text = f"SPF fail for {result.domain}: {explanation}"
        if mode == "reject":
            return reject(550, "5.7.23", text, "spf_fail")
        return Verdict(Action.TAG, 250, "2.7.23", text, "spf_fail")
    if result.result == "softfail":
        return Verdict(Action.TAG, 250, "2.7.23", f"SPF softfail for {result.domain}: {explanation}", "spf_softfail")
    if result.result == "temperror" and mode == "reject":
        return defer(451, "4.7.24", f"SPF temporary error for {result.domain}: {explanation}", "spf_temperror")
    return None
