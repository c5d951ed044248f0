"""`smtp-relay domains -f FILE`: the operator's DNS checks of SendingDomains, run locally before deploying.

The file holds `SendingDomain` documents and, for keys a team brings, the `Secret`s that hold their
`private.pem` (stringData or base64 data, as Kubernetes takes them). Each domain is checked against the
resolver its `dns.nameservers` names, else `--nameserver`, else the system's. Exit codes: 0 every
required record is in place, 1 some are not, 2 the file is refused (every problem named by its field).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.fields import DnsSpec
from smtp_relay.config.manifest import ManifestError, SecretData, decode_secret, format_validation_error, read_documents
from smtp_relay.config.spec import API_GROUP
from smtp_relay.dnscheck.dkim_keys import public_txt_from_pem
from smtp_relay.dnscheck.records import effective_dns
from smtp_relay.dnscheck.report import all_verified, json_report, text_report
from smtp_relay.dnscheck.verify import RecordCheck

EXIT_NOT_VERIFIED = 1
EXIT_BAD_FILE = 2
KEY_FILE = "private.pem"


@dataclass(frozen=True)
class LocalDomain:
    """One SendingDomain of the file, with the public keys its Secrets give."""

    name: str
    spec: SendingDomainSpec
    dkim: Mapping[str, str] = field(default_factory=dict)
    """selector -> public-key TXT value, for the keys found in the file."""
    note: str = ""
    """Why the key is not known, when the spec names a Secret the file does not hold."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `domains` sub-command's options (`smtp_relay.cli` owns the parser)."""
    parser.add_argument("-f", "--file", type=Path, required=True, help="YAML with SendingDomains (+ key Secrets)")
    parser.add_argument(
        "--nameserver",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="resolver for domains without dns.nameservers (repeatable; default: the system's)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (status.records rows) instead of a table")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per DNS lookup (default 5)")


def load_domains(path: Path) -> list[LocalDomain]:
    """The SendingDomains of a multi-document YAML file; ManifestError lists every problem."""
    docs = read_documents(path)
    raw: list[dict[str, Any]] = []
    secrets: dict[str, SecretData] = {}
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError([f"{path}: every document must be a mapping"])
        if doc.get("kind") == "SendingDomain":
            raw.append(doc)
        elif doc.get("kind") == "Secret":
            secret = decode_secret(doc)
            secrets[secret.name] = secret
    if not raw:
        raise ManifestError([f"{path}: no SendingDomain document"])
    problems: list[str] = []
    domains = [d for d in (_domain(doc, secrets, problems) for doc in raw) if d is not None]
    seen: set[str] = set()
    for domain in domains:
        if domain.spec.domain in seen:
            problems.append(f"SendingDomain {domain.name}: domain {domain.spec.domain} is declared twice")
        seen.add(domain.spec.domain)
    if problems:
        raise ManifestError(problems)
    return domains


def _domain(doc: Mapping[str, Any], secrets: Mapping[str, SecretData], problems: list[str]) -> LocalDomain | None:
    name = str((doc.get("metadata") or {}).get("name", ""))
    where = f"SendingDomain {name or '(no name)'}"
    api_version = str(doc.get("apiVersion", ""))
    if api_version.split("/")[0] != API_GROUP:
        problems.append(f"{where}: apiVersion must be {API_GROUP}/v1alpha1, not {api_version!r}")
        return None
    try:
        spec = SendingDomainSpec.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        problems.extend(f"{where}: {line}" for line in format_validation_error(exc))
        return None
    secret_name, selector = spec.dkim.secret_name, spec.dkim.selector
    if secret_name is None or selector is None:
        return LocalDomain(name, spec)  # the operator's keys: not known before it generates them
    if secret_name not in secrets:
        note = f"{where}: Secret {secret_name} (spec.dkim.secretName) is not in the file: its record is not compared"
        return LocalDomain(name, spec, note=note)
    pem = secrets[secret_name].data.get(KEY_FILE)
    if pem is None:
        problems.append(f"{where}: spec.dkim.secretName: Secret {secret_name} has no {KEY_FILE}")
        return None
    try:
        return LocalDomain(name, spec, {selector: public_txt_from_pem(pem)})
    except ValueError as exc:
        problems.append(f"{where}: spec.dkim.secretName: Secret {secret_name} {KEY_FILE}: {exc}")
        return None


async def check_all(
    domains: Sequence[LocalDomain], nameservers: Sequence[str], lookup_time: float
) -> dict[str, list[RecordCheck]]:
    """Every domain's checks, all concurrently; keyed by domain name, in file order."""
    from smtp_relay.dnscheck.observe import check_domain  # the DNS stack, imported only when it is used

    results = await asyncio.gather(
        *(check_domain(d.spec, d.dkim, effective_dns(d.spec, nameservers), lookup_time=lookup_time) for d in domains)
    )
    return {d.spec.domain: checks for d, checks in zip(domains, results, strict=True)}


def run(args: argparse.Namespace) -> int:
    """The `domains` sub-command: load, check, print; the exit code says whether all are verified."""
    try:
        DnsSpec(nameservers=args.nameserver)
    except ValidationError as exc:
        for line in format_validation_error(exc, "--nameserver"):
            print(line.replace("--nameserver.nameservers", "--nameserver"), file=sys.stderr)
        return EXIT_BAD_FILE
    try:
        domains = load_domains(args.file)
    except ManifestError as exc:
        print(f"{args.file}: refused:\n{exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    for domain in domains:
        if domain.note:
            print(domain.note, file=sys.stderr)
    checks = asyncio.run(check_all(domains, args.nameserver, args.timeout))
    print(json_report(checks) if args.json else text_report(checks), end="")
    return 0 if all(all_verified(c) for c in checks.values()) else EXIT_NOT_VERIFIED
