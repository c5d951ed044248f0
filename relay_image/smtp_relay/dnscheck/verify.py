"""The verdict per record: an observation of DNS compared with the record the domain must publish.

Pure, so every rule is unit-tested without DNS, and the operator and `smtp-relay domains` judge alike.
Statuses and error types follow Amazon SES's per-record verification info: a missing name is
HOST_NOT_FOUND, a name without the record is TYPE_NOT_FOUND, a wrong record INVALID_VALUE (all Failed),
and a server that did not answer DNS_SERVER_ERROR (TemporaryFailure: no verdict on the record itself).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from smtp_relay.dnscheck.dmarc import DmarcError, is_dmarc, parse_dmarc
from smtp_relay.dnscheck.records import ExpectedRecord, Purpose, RecordType

Status = Literal["Success", "Pending", "Failed", "TemporaryFailure", "NotStarted"]
ErrorType = Literal["HOST_NOT_FOUND", "TYPE_NOT_FOUND", "INVALID_VALUE", "DNS_SERVER_ERROR"]
LookupState = Literal["found", "noHost", "noType", "serverError"]


@dataclass(frozen=True)
class Observation:
    """What DNS answered for one name and type."""

    state: LookupState
    values: tuple[str, ...] = ()
    """TXT: each record's character-strings joined; MX: `<preference> <host>`."""
    error: str = ""
    """The resolver's words for a serverError (SERVFAIL, REFUSED, timeout)."""


@dataclass(frozen=True)
class SpfEvaluation:
    """check_host's result for one egress address (RFC 7208 2.6)."""

    address: str
    result: str
    """pass, fail, softfail, neutral, none, temperror or permerror."""
    explanation: str = ""


@dataclass(frozen=True)
class IncludeWalk:
    """Whether evaluating the domain's SPF record reaches `include:<the fleet's record>`."""

    reached: bool
    error: str = ""
    """Why the walk stopped short (a broken record, too many lookups, DNS down); empty otherwise."""
    temporary: bool = False
    """The error was DNS not answering: try again later."""


@dataclass(frozen=True)
class RecordCheck:
    """One row of status.records (and of `smtp-relay domains`)."""

    purpose: Purpose
    type: RecordType
    name: str
    expected: str
    observed: str
    status: Status
    error_type: ErrorType | None
    message: str
    required: bool = True

    def to_json(self) -> dict[str, object]:
        """The camelCase form of status.records[] (without the operator's timestamps)."""
        return {
            "purpose": self.purpose,
            "type": self.type,
            "name": self.name,
            "expected": self.expected,
            "observed": self.observed,
            "status": self.status,
            "errorType": self.error_type,
            "message": self.message,
            "required": self.required,
        }


def _check(record: ExpectedRecord, observed: str, status: Status, error: ErrorType | None, message: str) -> RecordCheck:
    return RecordCheck(
        record.purpose, record.type, record.name, record.expected, observed, status, error, message, record.required
    )


def _publish(record: ExpectedRecord) -> str:
    if not record.expected:
        return f"publish the {record.type} record of your key at {record.name}"
    value = record.expected if record.type == "MX" else f'"{record.expected}"'
    return f"publish {record.name} {record.type} {value}"


def _lookup_failed(record: ExpectedRecord, seen: Observation) -> RecordCheck | None:
    """The verdict when DNS gave no records at all (no name, no such type, no answer)."""
    if seen.state == "noHost":
        return _check(record, "", "Failed", "HOST_NOT_FOUND", f"{record.name} does not exist: {_publish(record)}")
    if seen.state == "noType":
        message = f"{record.name} has no {record.type} record: {_publish(record)}"
        return _check(record, "", "Failed", "TYPE_NOT_FOUND", message)
    if seen.state == "serverError":
        message = f"DNS did not answer for {record.name} ({seen.error}): no verdict until it does"
        return _check(record, "", "TemporaryFailure", "DNS_SERVER_ERROR", message)
    return None


def _none_of_kind(record: ExpectedRecord, seen: Observation, kind: str) -> RecordCheck:
    message = f"{record.name} has TXT records but no {kind} record: {_publish(record)}"
    return _check(record, " | ".join(seen.values), "Failed", "TYPE_NOT_FOUND", message)


# --- DKIM (RFC 6376 3.6.1, RFC 8463) ---------------------------------------------------------------


class _TagError(ValueError):
    pass


def dkim_tags(text: str) -> dict[str, str]:
    """A DKIM tag-list (RFC 6376 3.2): names lower case, values with folding whitespace around them
    removed; a duplicate tag makes the whole list invalid."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not equals or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise _TagError(f"{part.strip()!r} is not a tag=value pair")
        if name in tags:
            raise _TagError(f"{name}= appears twice")
        tags[name] = value.strip()
    return tags


def _is_dkim_key(text: str) -> bool:
    """A key record claims to be one by a leading v=DKIM1, or at least a p= tag."""
    try:
        tags = dkim_tags(text)
    except _TagError:
        return text.strip().lower().startswith("v=dkim1")
    return "p" in tags or tags.get("v") == "DKIM1"


def _key_bytes(tags: dict[str, str]) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", tags.get("p", "")), validate=True)
    except (binascii.Error, ValueError):
        raise _TagError("p= is not valid base64") from None


def _dkim_problem(published: str, want: dict[str, str]) -> str | None:
    """Why a published key record does not carry the expected key; None when it does."""
    try:
        tags = dkim_tags(published)
        if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
            return "v= must be DKIM1 and come first"
        if "p" not in tags:
            return "it has no p= tag"
        if not re.sub(r"\s+", "", tags["p"]):
            return "its p= is empty: the key is revoked"
        kind, want_kind = tags.get("k", "rsa").lower(), want.get("k", "rsa").lower()
        if kind != want_kind:
            return f"it is a k={kind} key, the signing key is k={want_kind}"
        if _key_bytes(tags) != _key_bytes(want):
            return "its p= is a different public key from the signing key's"
    except _TagError as exc:
        return str(exc)
    return None


def check_dkim(record: ExpectedRecord, seen: Observation) -> RecordCheck:
    """The selector's key record carries the signing key (decoded bytes compared, k= defaults to rsa).

    Without the key (`record.expected` empty: a team's key not readable here) the published record is
    reported as Pending, since it cannot be compared.
    """
    failed = _lookup_failed(record, seen)
    if failed is not None:
        return failed
    keys = [value for value in seen.values if _is_dkim_key(value)]
    if not keys:
        return _none_of_kind(record, seen, "DKIM key")
    if not record.expected:
        message = f"no key known locally: {record.name} publishes a DKIM key that cannot be compared"
        return _check(record, " | ".join(keys), "Pending", None, message)
    want = dkim_tags(record.expected)
    problems = []
    for value in keys:
        problem = _dkim_problem(value, want)
        if problem is None:
            return _check(record, value, "Success", None, "the published key matches the signing key")
        problems.append(problem)
    message = f"the DKIM record at {record.name} does not match: {'; '.join(problems)}; {_publish(record)}"
    return _check(record, " | ".join(keys), "Failed", "INVALID_VALUE", message)


def dkim_not_started(domain: str) -> RecordCheck:
    """The row for a domain without any DKIM key yet: the operator generates one (or a team names theirs)."""
    return RecordCheck(
        "dkim",
        "TXT",
        f"<selector>._domainkey.{domain}",
        "",
        "",
        "NotStarted",
        None,
        "no DKIM key yet: the operator generates one; or set dkim.selector and dkim.secretName to bring yours",
    )


# --- SPF (RFC 7208) ---------------------------------------------------------------------------------


def _spf_records(values: Sequence[str]) -> list[str]:
    return [v for v in values if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]


def check_spf(
    record: ExpectedRecord,
    seen: Observation,
    evaluations: Sequence[SpfEvaluation],
    include: str = "",
    walk: IncludeWalk | None = None,
) -> RecordCheck:
    """SPF as a receiver evaluates it: every egress address must get `pass`; without egress addresses,
    the record must reach `include:<include>`; with neither there is nothing to check yet."""
    failed = _lookup_failed(record, seen)
    if failed is not None:
        return failed
    spf = _spf_records(seen.values)
    if not spf:
        return _none_of_kind(record, seen, "SPF (v=spf1)")
    observed = " | ".join(spf)
    if len(spf) > 1:
        message = f"{record.name} has {len(spf)} SPF records, receivers give permerror (RFC 7208 4.5): keep one"
        return _check(record, observed, "Failed", "INVALID_VALUE", message)
    if evaluations:
        return _spf_by_evaluation(record, observed, evaluations)
    if include and walk is not None:
        if walk.reached:
            return _check(record, observed, "Success", None, f"the SPF record includes {include}")
        if walk.temporary:
            return _check(record, observed, "TemporaryFailure", "DNS_SERVER_ERROR", f"SPF not evaluated: {walk.error}")
        why = walk.error or f"it does not reach include:{include} before its all"
        message = f"the SPF record at {record.name} does not authorize the fleet: {why}; {_publish(record)}"
        return _check(record, observed, "Failed", "INVALID_VALUE", message)
    message = "nothing to check: set spf.egressIps (the relays' egress addresses) or spf.include"
    return _check(record, observed, "Pending", None, message)


def _spf_by_evaluation(record: ExpectedRecord, observed: str, evaluations: Sequence[SpfEvaluation]) -> RecordCheck:
    wrong = [e for e in evaluations if e.result not in ("pass", "temperror")]
    if wrong:
        reasons = "; ".join(
            f"{e.address} gets {e.result}" + (f" ({e.explanation})" if e.explanation else "") for e in wrong
        )
        message = f"the SPF record at {record.name} does not authorize every egress address: {reasons}; "
        return _check(record, observed, "Failed", "INVALID_VALUE", message + _publish(record))
    temporary = [e for e in evaluations if e.result == "temperror"]
    if temporary:
        reasons = "; ".join(f"{e.address}: {e.explanation}" for e in temporary)
        return _check(record, observed, "TemporaryFailure", "DNS_SERVER_ERROR", f"SPF temperror: {reasons}")
    addresses = ", ".join(e.address for e in evaluations)
    return _check(record, observed, "Success", None, f"SPF passes for {addresses}")


# --- DMARC (RFC 7489) and the return-path MX ---------------------------------------------------------


def check_dmarc(record: ExpectedRecord, seen: Observation) -> RecordCheck:
    """One valid DMARC policy record at _dmarc.<domain>; a p= other than the recommended one is noted."""
    failed = _lookup_failed(record, seen)
    if failed is not None:
        return failed
    found = [value for value in seen.values if is_dmarc(value)]
    if not found:
        return _none_of_kind(record, seen, "DMARC (v=DMARC1)")
    observed = " | ".join(found)
    if len(found) > 1:
        message = f"{record.name} has {len(found)} DMARC records, receivers then apply none (RFC 7489 6.6.3)"
        return _check(record, observed, "Failed", "INVALID_VALUE", message + f": keep one; {_publish(record)}")
    try:
        policy = parse_dmarc(found[0])
    except DmarcError as exc:
        message = f"the DMARC record at {record.name} is invalid: {exc}; {_publish(record)}"
        return _check(record, observed, "Failed", "INVALID_VALUE", message)
    message = f"DMARC policy p={policy.p}"
    recommended = re.search(r"p=(\w+)", record.expected)
    if recommended is not None and recommended[1] != policy.p:
        message += f" (recommended: p={recommended[1]})"
    return _check(record, observed, "Success", None, message)


def _mx_host(value: str) -> str:
    return value.split()[-1].rstrip(".").lower() if value.split() else ""


def check_mx(record: ExpectedRecord, seen: Observation) -> RecordCheck:
    """The return-path domain's MX names the bounce host (the preference does not matter)."""
    failed = _lookup_failed(record, seen)
    if failed is not None:
        return failed
    observed = " | ".join(seen.values)
    want = _mx_host(record.expected)
    if any(_mx_host(value) == want for value in seen.values):
        return _check(record, observed, "Success", None, f"{record.name} receives bounces at {want}")
    message = f"the MX of {record.name} is {observed}, not {want}: {_publish(record)}"
    return _check(record, observed, "Failed", "INVALID_VALUE", message)
