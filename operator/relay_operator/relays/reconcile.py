"""observe -> validate -> render -> apply -> status, for one SmtpRelay. Idempotent: safe to rerun.

The I/O of the controller, all through `kube`; what to check (`validation`), what to write
(`render`) and what to report (`status`) is decided by pure code with the observed data in hand.
A spec that passes the schema can still be unable to run (a referenced Secret missing or without
the key the relay reads). Then the SmtpRelay turns Degraded with a message naming the field and the
fix, and the children are not touched: the fleet keeps serving with its last good config rather than
rolling pods into a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from relay_operator.conditions import status_changed
from relay_operator.kube import ApiError, Kube, NameConflict, Outcome, controller_of, foreign_owner
from relay_operator.relays.render.admin_token import (
    admin_token_secret_name,
    build_admin_token_secret,
    new_admin_token,
    read_admin_token,
)
from relay_operator.relays.render.children import build_children
from relay_operator.relays.render.common import Manifest, Owner, selector_string
from relay_operator.relays.render.config import CONFIG_KEY
from relay_operator.relays.render.domains import RelayDomain, dkim_secret_name, key_secret_names, relay_domains
from relay_operator.relays.status import QUEUE_REASONS, DrainReport, compute_status
from relay_operator.relays.validation import Problem, parse_or_problems, secret_problems, spec_problems
from relay_operator.settings import Settings
from smtp_relay.config.secret_refs import SecretRef, secret_refs
from smtp_relay.config.source import config_digest
from smtp_relay.config.spec import SmtpRelaySpec

logger = logging.getLogger(__name__)

RETRIED_REASONS = frozenset({"ApplyFailed", "NameConflict"})
"""Problems met while applying (not in the spec): the reconcile is retried with backoff until they clear."""


class Recorder(Protocol):
    """Where Kubernetes Events about the SmtpRelay go (kopf's posting in production, a list in tests)."""

    def info(self, reason: str, message: str) -> None: ...

    def warn(self, reason: str, message: str) -> None: ...


@dataclass
class Result:
    """What one reconciliation did, for logs, events and tests."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    """`Kind/name` -> created, patched, unchanged or recreated."""
    problems: list[Problem] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_changed: bool = False
    """Whether `status` differs from the SmtpRelay's status as it was read."""
    admin_token: str = ""
    """The relays' admin token as this reconcile created or read it ("" when it did neither): the telemetry
    takes it from here rather than reading the Secret again."""

    @property
    def changed(self) -> list[str]:
        return [key for key, outcome in self.outcomes.items() if outcome != "unchanged"]


async def _observe_secrets(kube: Kube, namespace: str, refs: Sequence[SecretRef]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in dict.fromkeys(ref.name for ref in refs):
        found[name] = await kube.get("Secret", namespace, name)
    return found


async def write_status(
    kube: Kube,
    owner: Owner,
    body: Mapping[str, Any],
    spec: SmtpRelaySpec | None,
    problems: Sequence[Problem],
    statefulset: Mapping[str, Any] | None,
    now: datetime | None = None,
    write: bool = True,
    queue: Mapping[str, Any] | None = None,
    drain: DrainReport | None = None,
    config_digest: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Compute the status and patch it (when `write`), unless it would not change; (patch, changed)."""
    current = dict(body.get("status") or {})
    moment = now or datetime.now(UTC)
    patch = compute_status(owner, spec, statefulset, current, moment, problems, queue, drain, config_digest)
    changed = status_changed(patch, current)
    if changed and write:
        await kube.patch("SmtpRelay", owner.namespace, owner.name, {"status": patch}, subresource="status")
    return patch, changed


def transient(exc: ApiError) -> bool:
    """Throttling and server errors pass by themselves (retried in seconds, not reported); the rest (422 the
    schema refused, 403 RBAC, a persistent 409, a name conflict) needs a human and goes into status."""
    return exc.status == 429 or exc.status >= 500


@dataclass
class _Applied:
    done: list[tuple[str, Outcome, dict[str, Any]]] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)


async def _apply_children(kube: Kube, children: Sequence[Manifest], events: Recorder, create_first: bool) -> _Applied:
    """Apply every child concurrently, except that the StatefulSet waits for its ConfigMap (config
    before pods, so a failed ConfigMap holds the StatefulSet back). Every child is tried; refusals become
    Problems (ApplyFailed or NameConflict, naming the child), transient errors are raised after the rest ran."""

    def recreating(kind: str, name: str, fields: list[str]) -> None:
        events.info("Recreating", f"{kind}/{name}: {', '.join(fields)} cannot change in place; recreating it with"
                    " orphan propagation (the pods keep running and are adopted by the new one)")  # fmt: skip

    async def apply_one(child: Manifest, after: asyncio.Task[Any] | None) -> tuple[str, Outcome, dict[str, Any]] | None:
        key = f"{child['kind']}/{child['metadata']['name']}"
        if after is not None:
            try:
                await after
            except ApiError as exc:
                raise _HeldBack(key) from exc  # the ConfigMap's own error is reported once, as its own
        try:
            outcome, applied = await kube.apply(child, create_first=create_first, on_recreate=recreating)
        except ApiError as exc:
            if child["kind"] == "ServiceMonitor" and exc.status == 404:
                events.warn("ServiceMonitorUnavailable", "monitoring.coreos.com/v1 is not installed; skipped")
                return None
            if not transient(exc):
                events.warn("NameConflict" if isinstance(exc, NameConflict) else "ApplyFailed", f"{key}: {exc.message}")
            raise
        return key, outcome, applied

    config: asyncio.Task[Any] | None = None
    tasks: list[asyncio.Task[Any]] = []
    for child in children:
        task = asyncio.ensure_future(apply_one(child, config if child["kind"] == "StatefulSet" else None))
        if child["kind"] == "ConfigMap":
            config = task
        tasks.append(task)
    applied, passing = _Applied(), []
    for child, item in zip(children, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
        key = f"{child['kind']}/{child['metadata']['name']}"
        if isinstance(item, NameConflict):
            applied.failed.append(Problem("NameConflict", f"{key}: {item.message}"))
        elif isinstance(item, ApiError) and not transient(item):
            applied.failed.append(Problem("ApplyFailed", f"{key}: the API refused it ({item.status}): {item.message}"))
        elif isinstance(item, _HeldBack):
            applied.failed.append(Problem("ApplyFailed", f"{key}: held back until its ConfigMap applies"))
        elif isinstance(item, BaseException):
            passing.append(item)
        elif item is not None:
            applied.done.append(item)
    if passing:
        raise passing[0]
    return applied


class _HeldBack(Exception):
    """The StatefulSet is not applied because its ConfigMap failed (pods must not start on a stale config)."""


async def reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    settings: Settings,
    events: Recorder,
    *,
    fresh: bool = False,
    write_status_patch: bool = True,
    replicas: int | None = None,
    drain: DrainReport | None = None,
) -> Result:
    """Make the children match the SmtpRelay `body` and report on them.

    `fresh`: the SmtpRelay was just created, so its children most likely do not exist: create them
    without reading first (an existing one costs a 409 and then the usual read and compare).
    `write_status_patch=False`: leave the status patch in `result.status` (and whether it changes
    anything in `result.status_changed`) for the caller to write, e.g. with kopf's own patch.
    `replicas` and `drain`: a scale-down waiting for its pods to drain (fleet/drain.py) keeps the StatefulSet's
    replicas and says so in status.
    """
    owner = Owner.from_body(body)
    result = Result()
    spec, problems = parse_or_problems(body)
    if spec is not None:
        problems = spec_problems(owner, spec)
        refs = secret_refs(spec)
        if refs:
            problems += secret_problems(refs, owner.namespace, await _observe_secrets(kube, owner.namespace, refs))
    result.problems = problems
    if problems:
        message = "; ".join(p.message for p in problems)
        if problems[0].reason not in _reported(body):
            events.warn(problems[0].reason, f"{message} (children left as they are)")
        observed = await kube.get("StatefulSet", owner.namespace, owner.name)
        result.status, result.status_changed = await write_status(
            kube, owner, body, spec, problems, observed, write=write_status_patch
        )
        return result

    assert spec is not None
    token_key = f"Secret/{admin_token_secret_name(owner)}"
    try:
        created, result.admin_token = await _ensure_admin_token(kube, owner, create_first=fresh)
        if created:
            result.outcomes[token_key] = "created"
            events.info("Created", f"{token_key} created (the relays' admin token)")
    except ApiError as exc:
        if transient(exc):
            raise
        reason = "NameConflict" if isinstance(exc, NameConflict) else "ApplyFailed"
        message = exc.message if reason == "NameConflict" else f"the API refused it ({exc.status}): {exc.message}"
        result.problems = [Problem(reason, f"{token_key}: {message}")]
        events.warn(reason, f"{token_key}: {message} (children left as they are)")
        observed = await kube.get("StatefulSet", owner.namespace, owner.name)
        result.status, result.status_changed = await write_status(
            kube, owner, body, spec, result.problems, observed, write=write_status_patch
        )
        return result
    statefulset: dict[str, Any] | None = None
    domains = await _observe_domains(kube, owner)  # one list; a relay may be created after its domains
    children = build_children(owner, spec, settings, domains, replicas)
    applied = await _apply_children(kube, children, events, create_first=fresh)
    await _drop_stale_keys(kube, owner, children, applied)
    for key, outcome, body_applied in applied.done:
        result.outcomes[key] = outcome
        if key.startswith("StatefulSet/"):
            statefulset = body_applied
        if outcome != "unchanged":
            events.info(outcome.capitalize(), f"{key} {outcome}")
    if not fresh:  # a relay just created has nothing to prune
        await _prune_unwanted(kube, owner, {c["kind"] for c in children}, events)
    if statefulset is None:  # not applied this time (refused or held back): report on the one that runs
        statefulset = await kube.get("StatefulSet", owner.namespace, owner.name)
    result.problems = applied.failed
    rendered = next((c for c in children if c["kind"] == "ConfigMap"), None)
    digest = config_digest(str(rendered["data"][CONFIG_KEY]).encode()) if rendered is not None else None
    result.status, result.status_changed = await write_status(
        kube,
        owner,
        body,
        spec,
        applied.failed,
        statefulset,
        write=write_status_patch,
        drain=drain,
        config_digest=digest,
    )
    return result


async def _observe_domains(kube: Kube, owner: Owner) -> list[RelayDomain]:
    """The SendingDomains naming this relay, with the Secrets of their active keys."""
    domains = await kube.list("SendingDomain", owner.namespace)
    secrets = {name: await kube.get("Secret", owner.namespace, name) for name in key_secret_names(domains, owner.name)}
    return relay_domains(owner, domains, secrets)


async def _drop_stale_keys(kube: Kube, owner: Owner, children: Sequence[Manifest], applied: _Applied) -> None:
    """A merge patch only adds keys: the keys of a domain that went (or rotated) are removed explicitly."""
    name = dkim_secret_name(owner)
    wanted = next(c.get("data") or {} for c in children if c["metadata"]["name"] == name and c["kind"] == "Secret")
    for key, _outcome, stored in applied.done:
        if key == f"Secret/{name}":
            stale = [k for k in stored.get("data") or {} if k not in wanted]
            if stale:
                await kube.patch("Secret", owner.namespace, name, {"data": dict.fromkeys(stale)})


OPTIONAL_CHILDREN = ("NetworkPolicy", "ServiceMonitor")
"""Children the settings may stop asking for: deleted when no longer rendered (only if they are ours)."""


async def _prune_unwanted(kube: Kube, owner: Owner, rendered: set[str], events: Recorder) -> None:
    for kind in OPTIONAL_CHILDREN:
        if kind in rendered:
            continue
        try:
            found = await kube.get(kind, owner.namespace, owner.name)
        except ApiError as exc:
            if exc.status == 403:  # not granted (its kind never enabled in this install): nothing of ours there
                continue
            raise
        if found is None or (controller_of(found) or {}).get("uid") != owner.uid:
            continue
        if await kube.delete(kind, owner.namespace, owner.name):
            events.info("Pruned", f"{kind}/{owner.name} deleted: the operator's settings no longer ask for it")


async def _ensure_admin_token(kube: Kube, owner: Owner, create_first: bool) -> tuple[bool, str]:
    """Create the admin-token Secret unless it exists (never overwritten): (created, the token; "" when unknown).
    A same-named Secret that is not ours raises NameConflict: its value must not become the relays' token."""
    name = admin_token_secret_name(owner)
    if create_first:
        token = new_admin_token()
        try:
            await kube.create(build_admin_token_secret(owner, token))
            return True, token
        except ApiError as exc:
            if exc.status != 409:
                raise
    existing = await kube.get("Secret", owner.namespace, name)
    if existing is None:
        token = new_admin_token()
        try:
            await kube.create(build_admin_token_secret(owner, token))
            return True, token
        except ApiError as exc:
            if exc.status != 409:  # 409: created meanwhile by another reconcile; checked next time
                raise
            return False, ""
    conflict = foreign_owner(build_admin_token_secret(owner, ""), existing)
    if conflict is not None:
        raise NameConflict(409, conflict)
    return False, read_admin_token(existing) or ""


def _reported(body: Mapping[str, Any]) -> set[str]:
    """Reasons already reported in the Degraded condition: no repeated Warning event per resync."""
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return {str(cond.get("reason"))}
    return set()


async def refresh_status(
    kube: Kube,
    namespace: str,
    name: str,
    statefulset: Mapping[str, Any] | None = None,
    queue: Mapping[str, Any] | None = None,
    body: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Status only, from the SmtpRelay and its StatefulSet (timers, child events); each is read unless given:
    `statefulset` as a watch event or the watch cache showed it, `body` the SmtpRelay as kopf's watch handed it
    to a timer; `queue` is status.queue as the pods just reported it (the timer's telemetry), else the last one
    stands."""
    if body is None:
        body = await kube.get("SmtpRelay", namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    owner = Owner.from_body(body)
    spec, problems = parse_or_problems(body)
    if not problems:
        problems = [
            Problem(str(c.get("reason")), str(c.get("message")))
            for c in (body.get("status") or {}).get("conditions") or []
            if c.get("type") == "Degraded"
            and c.get("status") == "True"
            and c.get("observedGeneration") == owner.generation
            and c.get("reason") not in QUEUE_REASONS
        ]  # keep a Degraded verdict from the last full reconcile until the spec changes (the queue's: computed anew)
    if statefulset is None:
        statefulset = await kube.get("StatefulSet", owner.namespace, owner.name)
    status, _ = await write_status(kube, owner, body, spec, problems, statefulset, queue=queue)
    return status


class StillDeleting(Exception):
    """A step of the deletion waits for the cluster (pods still stopping): try again in a few seconds."""


async def delete_claims(body: Mapping[str, Any], kube: Kube, events: Recorder) -> list[str]:
    """On deletion: remove the spool PVCs when spec.queue.deleteClaimsOnDelete says so.

    The PVCs come from volumeClaimTemplates, so they are owned by nobody and survive the StatefulSet;
    by default they are kept because they may still hold undelivered mail. They are deleted only once the
    StatefulSet and its pods are gone (deleted in the foreground first): while it exists, its controller
    recreates the claim of any pod it restarts, and a claim a running pod uses cannot go anyway.
    """
    owner = Owner.from_body(body)
    spec, _ = parse_or_problems(body)
    if spec is None or not spec.queue.delete_claims_on_delete:
        return []
    statefulset = await kube.get("StatefulSet", owner.namespace, owner.name)
    if statefulset is not None:
        if not statefulset["metadata"].get("deletionTimestamp"):
            await kube.delete("StatefulSet", owner.namespace, owner.name, propagation="Foreground")
            events.info("Deleting", f"StatefulSet/{owner.name}: stopping the pods before their spool PVCs go")
        raise StillDeleting(f"StatefulSet/{owner.name} and its pods are still stopping")
    deleted = []
    for claim in await kube.list("PersistentVolumeClaim", owner.namespace, selector_string(owner)):
        name = str(claim["metadata"]["name"])
        if await kube.delete("PersistentVolumeClaim", owner.namespace, name):
            deleted.append(name)
    if deleted:
        events.info("ClaimsDeleted", f"deleted spool PVCs {', '.join(deleted)} (queue.deleteClaimsOnDelete)")
    return deleted
