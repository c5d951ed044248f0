"""keys -> DNS checks -> rotation -> status, for one SendingDomain. Idempotent: safe to rerun at any time.

The I/O of the domain controller, all through `kube` (and DNS through `dnscheck.observe`); what the keys look
like (`keys`), when they rotate (`rotation`) and what to report (`status`) is decided by pure code. A key
is generated under a selector chosen from the clock and the selectors in use, so a reconcile that failed
after creating its Secret finds the same Secret again (409, ours) instead of leaving a second one behind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from relay_operator.conditions import status_changed
from relay_operator.domains.keys import (
    Domain,
    KeyPair,
    PublicKeys,
    build_key_secret,
    generate,
    key_secret_name,
    public_keys,
)
from relay_operator.domains.rotation import DEFAULT_RETENTION, DkimState, Inputs, Transition, advance
from relay_operator.domains.status import Keys, Problem, Timing, compute_status
from relay_operator.kube import ApiError, Kube, controller_of
from relay_operator.settings import Settings
from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.fields import DnsSpec
from smtp_relay.config.manifest import format_validation_error
from smtp_relay.config.units import parse_duration
from smtp_relay.dnscheck.observe import check_domain
from smtp_relay.dnscheck.records import dkim_name, effective_dns
from smtp_relay.dnscheck.verify import RecordCheck

logger = logging.getLogger(__name__)

ROTATE_ANNOTATION = "relayfleet.io/rotate-dkim"
RECHECK_ANNOTATION = "relayfleet.io/recheck"

CheckFn = Callable[[SendingDomainSpec, Mapping[str, str], DnsSpec], Awaitable[list[RecordCheck]]]


class Recorder(Protocol):
    """Where Kubernetes Events about the SendingDomain go (kopf's posting in production, a list in tests)."""

    def info(self, reason: str, message: str) -> None: ...

    def warn(self, reason: str, message: str) -> None: ...


@dataclass
class Result:
    """What one reconciliation found and wrote, for the handler and the tests."""

    status: dict[str, Any] = field(default_factory=dict)
    status_changed: bool = False
    problems: list[Problem] = field(default_factory=list)
    relays: list[str] = field(default_factory=list)
    """SmtpRelays to reconcile: verifiedForSending or the active selector changed, so their pods need the new set."""


def _ours(secret: Mapping[str, Any], domain: Domain) -> bool:
    return (controller_of(secret) or {}).get("uid") == domain.uid


@dataclass
class _Keys:
    """The public records of the keys in play, by selector of their Secret."""

    by_selector: dict[str, PublicKeys] = field(default_factory=dict)

    def records(self, *selectors: str | None) -> dict[str, str]:
        found: dict[str, str] = {}
        for selector in selectors:
            if selector and selector in self.by_selector:
                found.update(self.by_selector[selector].records)
        return found


async def _load_generated(
    kube: Kube, domain: Domain, state: DkimState, events: Recorder
) -> tuple[DkimState, _Keys, list[str]]:
    """The Secrets of the active and pending keys; one that is gone (or not ours, or unreadable) is dropped from
    the state, so the rotation makes a new key instead of publishing a record nobody can sign for."""
    keys, lost = _Keys(), []
    for selector in (state.active, state.pending):
        if selector is None:
            continue
        name = key_secret_name(domain, selector)
        secret = await kube.get("Secret", domain.namespace, name)
        try:
            if secret is None or not _ours(secret, domain):
                raise ValueError("it is gone" if secret is None else "it is not controlled by this SendingDomain")
            keys.by_selector[selector] = public_keys(secret, selector)
        except ValueError as exc:
            events.warn("DkimKeyLost", f"Secret {name} of selector {selector}: {exc}; a new key is generated")
            lost.append(selector)
            if selector == state.active:
                state = replace(state, active=None, activated_at=None)
            else:
                state = replace(state, pending=None)
    return state, keys, lost


async def _create_key(kube: Kube, domain: Domain, selector: str, spec: SendingDomainSpec) -> PublicKeys:
    """Create the key Secret of `selector`, or take the one an interrupted reconcile created (ours only)."""
    pair: KeyPair = generate(spec.dkim.key_bits, spec.dkim.ed25519)
    manifest = build_key_secret(domain, selector, pair)
    try:
        await kube.create(manifest)
    except ApiError as exc:
        if exc.status != 409:
            raise
        existing = await kube.get("Secret", domain.namespace, manifest["metadata"]["name"])
        if existing is None or not _ours(existing, domain):
            raise ApiError(409, f"Secret {manifest['metadata']['name']} exists and is not this domain's key") from exc
        return public_keys(existing, selector)
    return public_keys(manifest, selector)


async def _delete_key(kube: Kube, domain: Domain, selector: str) -> None:
    """Delete a revoked key's Secret (only ours: the name might have been taken by someone else meanwhile)."""
    name = key_secret_name(domain, selector)
    secret = await kube.get("Secret", domain.namespace, name)
    if secret is not None and _ours(secret, domain):
        await kube.delete("Secret", domain.namespace, name)


async def retention(kube: Kube, namespace: str, relays: Sequence[str]) -> timedelta:
    """The longest queue.retry.maxAge of the named SmtpRelays (5d, its default, when none exists): a message
    signed with a revoked key may be delivered that long after it was signed."""
    longest: timedelta | None = None
    for name in relays:
        body = await kube.get("SmtpRelay", namespace, name)
        if body is None:
            continue
        text = (((body.get("spec") or {}).get("queue") or {}).get("retry") or {}).get("maxAge") or "5d"
        try:
            age = timedelta(seconds=parse_duration(str(text)))
        except ValueError:
            age = DEFAULT_RETENTION
        longest = age if longest is None else max(longest, age)
    return DEFAULT_RETENTION if longest is None else longest


def _pending_verified(checks: Sequence[RecordCheck], spec: SendingDomainSpec, pending: Mapping[str, str]) -> bool:
    names = {dkim_name(selector, spec.domain.rstrip(".").lower()) for selector in pending}
    rows = [c for c in checks if c.purpose == "dkim" and c.name in names]
    return bool(pending) and len(rows) == len(names) and all(c.status == "Success" for c in rows)


def _mark_required(
    checks: Sequence[RecordCheck], spec: SendingDomainSpec, signing: Mapping[str, str]
) -> list[RecordCheck]:
    """DKIM rows count for verification only for the key that signs (or will sign first); SPF always; DMARC
    as spec.dmarc.required says (already in the check); other keys' rows are shown, not required."""
    names = {dkim_name(selector, spec.domain.rstrip(".").lower()) for selector in signing}
    return [
        replace(c, required=c.name in names) if c.purpose == "dkim" and c.status != "NotStarted" else c for c in checks
    ]


async def _generated_keys(
    body: Mapping[str, Any],
    spec: SendingDomainSpec,
    kube: Kube,
    domain: Domain,
    dns: DnsSpec,
    events: Recorder,
    now: datetime,
    check: CheckFn,
) -> tuple[list[RecordCheck], DkimState, Keys]:
    """Checks and rotation of operator-made keys: at most two rounds (a key generated in the first is checked)."""
    state = DkimState.from_status((body.get("status") or {}).get("dkim"))
    state, keys, lost = await _load_generated(kube, domain, state, events)
    unnamed = spec.model_copy(update={"dkim": spec.dkim.model_copy(update={"selector": None})})
    checks: list[RecordCheck] | None = None
    for _ in range(2):
        pending = keys.records(state.pending)
        checks = await check(unnamed, keys.records(state.active, state.pending), dns) if state.selectors() else None
        due_removal = state.revoked is not None and not state.safe_to_remove_revoked
        inputs = Inputs(
            now=now,
            rotate_every=timedelta(seconds=parse_duration(spec.dkim.rotate_every)),
            domain=spec.domain.rstrip(".").lower(),
            first_selector=spec.dkim.selector,
            rotate_request=domain.annotations.get(ROTATE_ANNOTATION) or None,
            pending_verified=checks is not None and _pending_verified(checks, spec, pending),
            retention=await retention(kube, domain.namespace, spec.relays) if due_removal else DEFAULT_RETENTION,
            taken=lost,
        )
        transition: Transition = advance(state, inputs)
        for action, selector in transition.actions:
            if action == "generate":
                keys.by_selector[selector] = await _create_key(kube, domain, selector, spec)
            else:
                await _delete_key(kube, domain, selector)
        for reason, message in transition.events:
            events.info(reason, message)
        state = transition.state
        if not any(action == "generate" for action, _ in transition.actions):
            break
        checks = None
    if checks is None:
        checks = await check(unnamed, keys.records(state.active, state.pending), dns)
    signing = keys.records(state.active) if state.active else keys.records(state.pending)
    active = keys.by_selector.get(state.active or "")
    shown = active or keys.by_selector.get(state.pending or "")
    info = Keys(
        secret_name=key_secret_name(domain, state.active) if active and state.active else None,
        key_bits=shown.key_bits if shown else None,
        ed25519_selector=active.ed25519_selector if active else None,
    )
    return _mark_required(checks, spec, signing), state, info


async def _brought_key(
    spec: SendingDomainSpec, kube: Kube, domain: Domain, dns: DnsSpec, check: CheckFn
) -> tuple[list[RecordCheck], DkimState, Keys, list[Problem]]:
    """A team's own key (spec.dkim.secretName): only its record is verified; never generated nor rotated."""
    assert spec.dkim.secret_name is not None and spec.dkim.selector is not None
    name, selector = spec.dkim.secret_name, spec.dkim.selector
    secret = await kube.get("Secret", domain.namespace, name)
    problems: list[Problem] = []
    found: PublicKeys | None = None
    if secret is None:
        problems.append(Problem("DkimKeySecretMissing", f"spec.dkim.secretName: Secret {name!r} not found: create"
                                f" it with private.pem, the key published under selector {selector!r}"))  # fmt: skip
    else:
        try:
            found = public_keys(secret, selector)
        except ValueError as exc:
            problems.append(Problem("DkimKeyInvalid", f"spec.dkim.secretName: Secret {name!r}: {exc}"))
    checks = await check(spec, found.records if found else {}, dns)
    state = DkimState(active=selector)
    keys = Keys(
        secret_name=name if found else None,
        key_bits=found.key_bits if found else None,
        ed25519_selector=found.ed25519_selector if found else None,
    )
    return checks, state, keys, problems


async def reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    settings: Settings,
    events: Recorder,
    *,
    now: datetime | None = None,
    check: CheckFn = check_domain,
    write_status: bool = True,
) -> Result:
    """Keep the SendingDomain's keys, check its DNS, advance its rotation and write its status."""
    domain = Domain.from_body(body)
    previous: Mapping[str, Any] = body.get("status") or {}
    now = now or datetime.now(UTC)
    timing = Timing(settings.domain_recheck_seconds, settings.dns_outage_grace_seconds)
    result = Result()
    try:
        spec = SendingDomainSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        result.problems = [Problem("InvalidSpec", "; ".join(format_validation_error(exc)))]
        result.status = compute_status(domain.generation, [], DkimState.from_status(previous.get("dkim")), Keys(),
                                       previous, now, timing, result.problems)  # fmt: skip
        result.status.pop("dkim")  # status.dkim stays as it was: the keys are left alone until the spec is fixed
        return await _write(kube, domain, previous, result, write_status)
    dns = effective_dns(spec, settings.nameservers())
    if spec.dkim.secret_name is not None:
        checks, state, keys, result.problems = await _brought_key(spec, kube, domain, dns, check)
    else:
        checks, state, keys = await _generated_keys(body, spec, kube, domain, dns, events, now, check)
    result.status = compute_status(domain.generation, checks, state, keys, previous, now, timing, result.problems,
                                   return_path=spec.return_path is not None)  # fmt: skip
    old_active = (previous.get("dkim") or {}).get("activeSelector")
    flipped = bool(previous.get("verifiedForSending")) != result.status["verifiedForSending"]
    if flipped or old_active != state.active:
        result.relays = list(spec.relays)
    if flipped:
        verdict = "verified for sending" if result.status["verifiedForSending"] else "no longer verified for sending"
        events.info("Verified" if result.status["verifiedForSending"] else "Unverified", f"{spec.domain} is {verdict}")
    return await _write(kube, domain, previous, result, write_status)


async def _write(kube: Kube, domain: Domain, previous: Mapping[str, Any], result: Result, write: bool) -> Result:
    result.status_changed = status_changed(result.status, previous)
    if result.status_changed and write:
        await kube.patch("SendingDomain", domain.namespace, domain.name, {"status": result.status}, "status")
    return result


async def reconcile_relays(
    kube: Kube, namespace: str, names: Sequence[str], reconcile_one: Callable[[dict[str, Any]], Awaitable[object]]
) -> list[str]:
    """Reconcile each named SmtpRelay that exists (its pods get the domain's new verdict and keys); the names
    reconciled. `reconcile_one` is the relay controller's reconcile, passed in by the handler (the controllers
    are independent layers)."""
    done = []
    for name in dict.fromkeys(names):
        body = await kube.get("SmtpRelay", namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        await reconcile_one(body)
        done.append(name)
    return done
