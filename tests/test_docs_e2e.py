"""README's end-to-end example, run as far as no real cluster is needed: its manifests are applied to the API
emulator with the operator running, and its `kubectl get` commands (taken verbatim from the README) answer
with the names and fields the README promises. Sending through the pod needs a real cluster; the local trial
covers that path (tests/test_docs_readme.py)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay_operator.settings import Settings
from tests.harness.waiting import wait_for
from tests.operator.handlers.test_e2e import GROUP, EmulatorApi, Operator, emulator, get, ok
from tests.peers.dns import DnsServer, ZoneSpec

__all__ = ["emulator"]
pytestmark = pytest.mark.peers
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def documents() -> list[dict[str, Any]]:
    """What the section applies: the file it names, then the heredoc it pipes to `kubectl apply -f -`."""
    text = section("End to end in a cluster")
    files = re.findall(r"(?m)^kubectl apply -f (examples/\S+)$", text)
    heredocs = re.findall(r"(?ms)^kubectl apply -f - <<'EOF'\n(.*?)^EOF$", text)
    assert files == ["examples/quickstart.yaml"] and len(heredocs) == 1
    docs = [d for f in files for d in yaml.safe_load_all((ROOT / f).read_text())]
    return docs + list(yaml.safe_load_all(heredocs[0]))


def kubectl_gets() -> list[list[str]]:
    """The read-only kubectl commands of the section, comments stripped, continuation lines joined."""
    text = section("End to end in a cluster").replace("\\\n", " ")
    commands = []
    for line in re.findall(r"(?m)^kubectl get (?!--raw).*$", text):
        words = shlex.split(line, comments=True)
        commands.append(words[1:])
    return commands


def test_the_end_to_end_manifests_and_commands_work_on_the_emulator(
    emulator: EmulatorApi,
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
) -> None:
    server = dns_server_factory({"localhost.test": ["@ A 127.0.0.1"]})  # the domain exists, its records do not
    settings = Settings(dns_nameservers=server.nameserver(), domain_recheck_seconds=3600, termination_grace_seconds=30)
    plural = {"SmtpRelay": "smtprelays", "SendingDomain": "sendingdomains"}
    with Operator(emulator, "default", settings):
        for doc in documents():
            ok(emulator, "POST", f"{GROUP}/namespaces/{doc['metadata']['namespace']}/{plural[doc['kind']]}", doc)
        domain = f"{GROUP}/namespaces/default/sendingdomains/localhost-test"
        records = wait_for(lambda: ((get(emulator, domain) or {}).get("status") or {}).get("records"))
        relay = f"{GROUP}/namespaces/default/smtprelays/quickstart"
        wait_for(lambda: ((get(emulator, relay) or {}).get("status") or {}).get("conditions"))
        selector = wait_for(
            lambda: (get(emulator, domain) or {}).get("status", {}).get("dkim", {}).get("pendingSelector")
        )
        assert ok(emulator, "GET", f"/api/v1/namespaces/default/secrets/localhost-test-dkim-{selector}")
        service = ok(emulator, "GET", "/api/v1/namespaces/default/services/quickstart")
        assert [p["port"] for p in service["spec"]["ports"]] == [2525]  # kubectl port-forward svc/quickstart 2525:2525
        sts = ok(emulator, "GET", "/apis/apps/v1/namespaces/default/statefulsets/quickstart")
        assert sts["spec"]["serviceName"] and sts["spec"]["replicas"] == 1  # its pod is quickstart-0

        outputs = [emulator.kubectl(*command) for command in kubectl_gets()]
    listing, record_lines, *_status = outputs
    assert re.search(r"(?m)^smtprelay\.relayfleet\.io/quickstart\s+1\s", listing), listing
    assert re.search(r"(?m)^sendingdomain\.relayfleet\.io/localhost-test\s+false\s", listing), listing
    purposes = {record["purpose"] for record in records}
    assert purposes and all(line.split()[0] in purposes for line in record_lines.splitlines()), record_lines
    assert any("._domainkey.localhost.test" in line for line in record_lines.splitlines()), record_lines
    conditions = outputs[-1]
    assert re.search(r"(?m)^Ready=(True|False) ", conditions), conditions
