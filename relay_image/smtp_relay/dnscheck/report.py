"""The checks of `smtp-relay domains` for humans (a table, then what to do) and for tools (JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from smtp_relay.dnscheck.verify import RecordCheck

COLUMNS = ("PURPOSE", "TYPE", "NAME", "STATUS", "EXPECTED")


def all_verified(checks: Sequence[RecordCheck]) -> bool:
    """Every required record is in place (advisory ones, like an optional DMARC, do not count)."""
    return all(check.status == "Success" for check in checks if check.required)


def _status(check: RecordCheck) -> str:
    text = check.status if check.error_type is None else f"{check.status} ({check.error_type})"
    return text if check.required else f"{text}, advisory"


def _expected(check: RecordCheck) -> str:
    if check.expected:
        return check.expected
    return "(the operator generates the key)" if check.status == "NotStarted" else "(key not known locally)"


def text_report(domains: Mapping[str, Sequence[RecordCheck]]) -> str:
    """Per domain: a table of the records to publish and their state, then one line per record not in
    place saying what to publish; the expected values are written out in full, ready to paste."""
    blocks = []
    for domain, checks in domains.items():
        verdict = "verified" if all_verified(checks) else "NOT verified"
        rows = [COLUMNS] + [(c.purpose, c.type, c.name, _status(c), _expected(c)) for c in checks]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
        lines = [f"SendingDomain {domain}: {verdict}"]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
        todo = [c for c in checks if c.status != "Success"]
        for check in todo:
            lines.append(f"  - {check.purpose} {check.name}: {check.message}")
            if check.observed:
                lines.append(f"    observed: {check.observed}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def json_report(domains: Mapping[str, Sequence[RecordCheck]]) -> str:
    """`{"domains": [{"domain", "verified", "records": [status.records[] rows]}]}`."""
    body = {
        "domains": [
            {"domain": domain, "verified": all_verified(checks), "records": [c.to_json() for c in checks]}
            for domain, checks in domains.items()
        ]
    }
    return json.dumps(body, indent=2) + "\n"
