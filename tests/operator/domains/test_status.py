"""SendingDomain status from checks: verdicts, conditions, lastSuccess, the outage grace, the backoff."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from relay_operator.conditions import status_changed
from relay_operator.domains.rotation import DkimState
from relay_operator.domains.status import Keys, Problem, Timing, compute_status
from smtp_relay.dnscheck.verify import RecordCheck

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TIMING = Timing(base_interval=300, outage_grace=3600)


def row(purpose: str, status: str = "Success", required: bool = True, name: str = "") -> RecordCheck:
    errors = {"Failed": "TYPE_NOT_FOUND", "TemporaryFailure": "DNS_SERVER_ERROR"}
    kind = "MX" if purpose == "returnPath" else "TXT"
    return RecordCheck(purpose, kind, name or f"{purpose}.example.com", "want", "", status,  # type: ignore[arg-type]
                       errors.get(status), f"{purpose} is {status}", required)  # type: ignore[arg-type]  # fmt: skip


GOOD = [row("dkim", name="s1._domainkey.example.com"), row("spf"), row("dmarc", "Failed", required=False)]
STATE = DkimState(active="s1", activated_at=T0)
KEYS = Keys(secret_name="example-dkim-s1", key_bits=2048)


def status(
    checks: list[RecordCheck], previous: dict[str, Any] | None = None, now: datetime = T0, **kw: Any
) -> dict[str, Any]:
    return compute_status(3, checks, STATE, KEYS, previous, now, TIMING, **kw)


def cond(result: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in result["conditions"] if c["type"] == kind)


def test_every_required_record_in_place_is_verified_whatever_advisory_dmarc_says() -> None:
    result = status(GOOD)
    assert result["verifiedForSending"] is True and result["observedGeneration"] == 3
    assert [(c["type"], c["status"]) for c in result["conditions"]] == [
        ("Ready", "True"), ("DkimVerified", "True"), ("SpfAligned", "True"), ("DmarcPresent", "False")]  # fmt: skip
    assert cond(result, "DmarcPresent")["message"] == "dmarc is Failed"
    assert cond(result, "DmarcPresent")["reason"] == "TypeNotFound"
    assert all(c["observedGeneration"] == 3 for c in result["conditions"])
    assert result["dkim"]["activeSelector"] == "s1" and result["dkim"]["secretName"] == "example-dkim-s1"
    assert result["dkim"]["keyBits"] == 2048 and result["dkim"]["pendingSelector"] is None
    assert result["lastChecked"] == "2026-12-01T12:00:00Z" and result["nextCheck"] == "2026-12-01T12:05:00Z"
    spf = result["records"][1]
    assert spf["lastSuccess"] == spf["lastChecked"] == "2026-12-01T12:00:00Z" and spf["required"] is True
    assert "errorType" not in spf and result["records"][2]["errorType"] == "TYPE_NOT_FOUND"


def test_a_missing_required_record_says_what_to_publish() -> None:
    result = status([row("dkim", "Failed"), row("spf")])
    assert result["verifiedForSending"] is False
    ready = cond(result, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RecordsMissing") and "dkim is Failed" in ready["message"]
    assert (cond(result, "DkimVerified")["status"], cond(result, "DkimVerified")["reason"]) == ("False", "TypeNotFound")
    assert "ReturnPathVerified" not in [c["type"] for c in result["conditions"]]
    with_rp = status([*GOOD, row("returnPath", "Failed")], return_path=True)
    assert cond(with_rp, "ReturnPathVerified")["status"] == "False" and not with_rp["verifiedForSending"]


def test_last_success_is_kept_while_a_record_stays_in_place() -> None:
    first = status(GOOD)
    later = status(GOOD, first, T0 + timedelta(minutes=5))
    assert later["records"][0]["lastSuccess"] == "2026-12-01T12:00:00Z"
    assert later["records"][0]["lastChecked"] == "2026-12-01T12:05:00Z"
    broken = status(
        [row("dkim", "Failed", name="s1._domainkey.example.com"), *GOOD[1:]], later, T0 + timedelta(minutes=10)
    )
    assert broken["records"][0]["lastSuccess"] == "2026-12-01T12:00:00Z"
    back = status(GOOD, broken, T0 + timedelta(minutes=15))
    assert back["records"][0]["lastSuccess"] == "2026-12-01T12:15:00Z"
    assert cond(back, "Ready")["lastTransitionTime"] == "2026-12-01T12:15:00Z"
    assert cond(later, "Ready")["lastTransitionTime"] == "2026-12-01T12:00:00Z"


def test_a_dns_outage_keeps_a_verified_domain_verified_for_the_grace_period_then_not() -> None:
    verified = status(GOOD)
    down = [replace(c, status="TemporaryFailure", error_type="DNS_SERVER_ERROR") for c in GOOD]  # type: ignore[arg-type]
    during = status(down, verified, T0 + timedelta(minutes=30))
    assert during["verifiedForSending"] is True and cond(during, "Ready")["reason"] == "DnsOutageGrace"
    assert cond(during, "DkimVerified")["status"] == "Unknown"
    assert during["records"][0]["status"] == "TemporaryFailure"
    assert during["lastVerified"] == "2026-12-01T12:00:00Z"
    after = status(down, during, T0 + timedelta(minutes=61))
    assert after["verifiedForSending"] is False and cond(after, "Ready")["status"] == "False"
    never = status(down, None, T0)
    assert never["verifiedForSending"] is False, "no grace for a domain that was never verified"
    wrong = status([row("dkim", "Failed"), *down[1:]], verified, T0 + timedelta(minutes=1))
    assert wrong["verifiedForSending"] is False, "a record really wrong is no outage"


def test_checks_back_off_while_dns_does_not_answer() -> None:
    down = [replace(c, status="TemporaryFailure") for c in GOOD]
    now, previous, waits = T0, None, []
    for _ in range(6):
        previous = status(down, previous, now)
        upcoming = datetime.fromisoformat(previous["nextCheck"].replace("Z", "+00:00"))
        waits.append((upcoming - now).total_seconds())
        now = upcoming
    assert waits == [600, 1200, 2400, 3600, 3600, 3600]
    assert status(GOOD, previous, now)["nextCheck"] == (now + timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_key_problem_names_the_field_and_keeps_the_domain_unverified() -> None:
    problem = Problem("DkimKeySecretMissing", "spec.dkim.secretName: Secret 'mine' not found")
    result = status(GOOD, problems=[problem])
    assert result["verifiedForSending"] is False
    assert cond(result, "DkimVerified")["reason"] == "DkimKeySecretMissing"
    assert cond(result, "Ready")["message"] == problem.message


def test_status_changed_compares_nested_merge_patches() -> None:
    result = status(GOOD)
    stored = {k: v for k, v in result.items()}
    stored["dkim"] = {k: v for k, v in result["dkim"].items() if v is not None}
    assert not status_changed(result, stored)
    assert status_changed({**result, "verifiedForSending": False}, stored)
