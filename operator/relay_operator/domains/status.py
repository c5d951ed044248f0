"""SendingDomain status from one round of DNS checks: pure, so every verdict is unit-tested with plain data.

The relay reads `verifiedForSending`, `dkim.activeSelector`, `dkim.secretName`, `dkim.ed25519Selector` and the
required `records[]`; people read the conditions, whose messages say what to publish (the check's own words).
A DNS outage (TemporaryFailure) keeps a verified domain verified for a grace period after its last full
success: a resolver that is down says nothing about the records, and mail must not stop for it. The result
is a JSON merge patch for `.status` (None removes a field that no longer applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay_operator.conditions import condition, timestamp
from relay_operator.domains.rotation import DkimState, parse_time
from smtp_relay.dnscheck.verify import RecordCheck

READY = "Ready"
DKIM = "DkimVerified"
SPF = "SpfAligned"
DMARC = "DmarcPresent"
RETURN_PATH = "ReturnPathVerified"

MAX_BACKOFF = 3600.0
"""The longest wait between checks while DNS does not answer."""


@dataclass(frozen=True)
class Problem:
    """Something that keeps the domain from being checked or signed as asked, naming the field."""

    reason: str
    message: str


@dataclass(frozen=True)
class Keys:
    """What status.dkim says about the keys besides the rotation: the active key's Secret and size."""

    secret_name: str | None = None
    key_bits: int | None = None
    ed25519_selector: str | None = None


@dataclass(frozen=True)
class Timing:
    base_interval: float = 300.0
    outage_grace: float = 86400.0


_REASONS = {
    "HOST_NOT_FOUND": "HostNotFound",
    "TYPE_NOT_FOUND": "TypeNotFound",
    "INVALID_VALUE": "InvalidValue",
    "DNS_SERVER_ERROR": "DnsServerError",
}


def _verdict(checks: Sequence[RecordCheck]) -> tuple[str, str]:
    """(condition status, reason) of a group of required records."""
    if not checks:
        return "Unknown", "NotChecked"
    failing = [c for c in checks if c.status != "Success"]
    if not failing:
        return "True", "Verified"
    if all(c.status == "TemporaryFailure" for c in failing):
        return "Unknown", "DnsServerError"
    first = next(c for c in failing if c.status != "TemporaryFailure")
    return "False", _REASONS.get(first.error_type or "", first.status)


def _group(
    kind: str, checks: Sequence[RecordCheck], extra: Sequence[str], gen: int, old: list[Any], now: datetime
) -> dict[str, Any]:
    status, reason = _verdict(checks)
    messages = [c.message for c in checks if c.status != "Success"] or [c.message for c in checks]
    if not checks:
        messages = ["not checked: the spec cannot be read"]
    return condition(kind, status, reason, "; ".join([*messages, *extra]), gen, old, now)


def record_rows(
    checks: Sequence[RecordCheck], previous: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """status.records: each check with lastChecked, and lastSuccess kept while the record stays Success."""
    before = {(r.get("purpose"), r.get("type"), r.get("name")): r for r in previous}
    rows = []
    for check in checks:
        row: dict[str, Any] = dict(check.to_json())
        old = before.get((check.purpose, check.type, check.name)) or {}
        row["lastChecked"] = timestamp(now)
        if check.status == "Success":
            kept = old.get("status") == "Success" and old.get("lastSuccess")
            row["lastSuccess"] = str(old["lastSuccess"]) if kept else timestamp(now)
        elif old.get("lastSuccess"):
            row["lastSuccess"] = str(old["lastSuccess"])
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def next_interval(base: float, temporary: bool, previous: Mapping[str, Any]) -> float:
    """The wait until the next check: the base interval, doubled per consecutive check DNS did not answer
    (from the previous lastChecked..nextCheck), at most an hour (or the base, when that is longer)."""
    if not temporary:
        return base
    last, upcoming = parse_time(previous.get("lastChecked")), parse_time(previous.get("nextCheck"))
    was_temporary = any(r.get("status") == "TemporaryFailure" for r in previous.get("records") or [])
    before = (upcoming - last).total_seconds() if last and upcoming and was_temporary else base
    return min(max(before, base) * 2, max(MAX_BACKOFF, base))


def verified_for_sending(
    checks: Sequence[RecordCheck], problems: Sequence[Problem], previous: Mapping[str, Any], now: datetime, grace: float
) -> tuple[bool, bool, datetime | None]:
    """(verified, held by the outage grace, last full success)."""
    required = [c for c in checks if c.required]
    last = parse_time(previous.get("lastVerified"))
    if required and not problems and all(c.status == "Success" for c in required):
        return True, False, now
    outage = [c for c in required if c.status != "Success"]
    held = (
        bool(previous.get("verifiedForSending"))
        and not problems
        and all(c.status == "TemporaryFailure" for c in outage)
        and last is not None
        and now < last + timedelta(seconds=grace)
    )
    return held, held, last


def compute_status(
    generation: int,
    checks: Sequence[RecordCheck],
    state: DkimState,
    keys: Keys,
    previous: Mapping[str, Any] | None,
    now: datetime,
    timing: Timing = Timing(),
    problems: Sequence[Problem] = (),
    return_path: bool = False,
) -> dict[str, Any]:
    """The `.status` merge patch after one round of checks.

    `checks` carry `required` as the domain's verification needs them: DKIM of the active key (or, before the
    first activation, the pending one), SPF, DMARC when spec.dmarc.required, the return-path records.
    """
    old = dict(previous or {})
    old_conditions = list(old.get("conditions") or [])
    verified, held, last_verified = verified_for_sending(checks, problems, old, now, timing.outage_grace)

    def purpose(name: str) -> list[RecordCheck]:
        return [c for c in checks if c.purpose == name]

    dkim_required = [c for c in purpose("dkim") if c.required]
    upcoming = [f"next key: {c.message}" for c in purpose("dkim") if not c.required and c.status != "Success"]
    key_problems = [p for p in problems if p.reason.startswith("Dkim")]
    if key_problems:
        dkim = condition(DKIM, "False", key_problems[0].reason, "; ".join(p.message for p in key_problems),
                         generation, old_conditions, now)  # fmt: skip
    else:
        dkim = _group(DKIM, dkim_required, upcoming, generation, old_conditions, now)
    conditions = [
        dkim,
        _group(SPF, purpose("spf"), [], generation, old_conditions, now),
        _group(DMARC, purpose("dmarc"), [], generation, old_conditions, now),
    ]
    if return_path:
        conditions.append(_group(RETURN_PATH, purpose("returnPath"), [], generation, old_conditions, now))
    if verified and not held:
        ready = condition(READY, "True", "Verified", "every required record is published: the relays sign and send"
                          " for this domain", generation, old_conditions, now)  # fmt: skip
    elif held:
        assert last_verified is not None
        until = timestamp(last_verified + timedelta(seconds=timing.outage_grace))
        ready = condition(READY, "True", "DnsOutageGrace", f"DNS does not answer; still verified (last verified"
                          f" {timestamp(last_verified)}) until {until} unless it answers", generation, old_conditions,
                          now)  # fmt: skip
    elif problems:
        ready = condition(READY, "False", problems[0].reason, "; ".join(p.message for p in problems), generation,
                          old_conditions, now)  # fmt: skip
    else:
        missing = [c for c in checks if c.required and c.status != "Success"]
        kinds = ", ".join(dict.fromkeys(c.purpose for c in missing))
        ready = condition(READY, "False", "RecordsMissing", f"not verified ({kinds}): " + "; ".join(
            c.message for c in missing), generation, old_conditions, now)  # fmt: skip

    temporary = any(c.status == "TemporaryFailure" for c in checks)
    interval = next_interval(timing.base_interval, temporary, old)
    return {
        "observedGeneration": generation,
        "verifiedForSending": verified,
        "lastVerified": timestamp(last_verified) if last_verified else None,
        "lastChecked": timestamp(now),
        "nextCheck": timestamp(now + timedelta(seconds=interval)),
        "records": record_rows(checks, old.get("records") or [], now),
        "dkim": {
            **state.to_status(),
            "keyBits": keys.key_bits,
            "secretName": keys.secret_name,
            "ed25519Selector": keys.ed25519_selector,
        },
        "conditions": [ready, *conditions],
    }


def check_due(status: Mapping[str, Any] | None, now: datetime, slack: float) -> bool:
    """Whether the recheck timer should check now: nextCheck reached (within `slack` seconds, so a timer tick
    that fires a moment early does not postpone the check by a whole interval), or never checked."""
    upcoming = parse_time((status or {}).get("nextCheck"))
    return upcoming is None or now >= upcoming - timedelta(seconds=slack)
