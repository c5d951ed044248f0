"""`smtp-relay domains -f FILE` as a child process against NSD on loopback: output and exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers.dns import DnsServer
from tests.relay.dnscheck.keys import ed25519_pem, rsa2048_pem
from tests.relay.dnscheck.zones import EGRESS, RSA_TXT, SELECTOR, ZONES

pytestmark = pytest.mark.peers

RELAY_BIN = Path(sys.executable).with_name("smtp-relay")
UNUSED = "127.0.0.1:9"
"""A nameserver nobody answers on: where a test shows that another one wins."""


@pytest.fixture
def server(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory(ZONES)  # type: ignore[no-any-return]


def sending_domain(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain", "metadata": {"name": name}, "spec": spec}


def key_secret(name: str, pem: bytes, *, base64_data: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
    if base64_data:
        body["data"] = {"private.pem": base64.b64encode(pem).decode()}
    else:
        body["stringData"] = {"private.pem": pem.decode()}
    return body


def good(server: DnsServer | None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "domain": "good.test",
        "dkim": {"selector": SELECTOR, "secretName": "good-dkim"},
        "spf": {"egressIps": [EGRESS]},
        "dmarc": {"required": True},
        "returnPath": {"domain": "bounces.good.test", "mx": "mx.fleet.test"},
        **extra,
    }
    if server is not None:
        spec["dns"] = {"nameservers": [server.nameserver()]}
    return sending_domain("good", **spec)


def domains(tmp_path: Path, *docs: dict[str, Any], args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "domains.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    command = [str(RELAY_BIN), "domains", "-f", str(manifest), "--timeout", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_verified_domain_prints_its_records_and_exits_0(server: DnsServer, tmp_path: Path) -> None:
    run = domains(tmp_path, good(server), key_secret("good-dkim", rsa2048_pem()))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "SendingDomain good.test: verified"
    assert lines[1].split() == ["PURPOSE", "TYPE", "NAME", "STATUS", "EXPECTED"]
    rows = {tuple(line.split()[:4]) for line in lines[2:]}
    assert rows == {
        ("dkim", "TXT", "s1._domainkey.good.test", "Success"),
        ("spf", "TXT", "good.test", "Success"),
        ("dmarc", "TXT", "_dmarc.good.test", "Success"),
        ("returnPath", "MX", "bounces.good.test", "Success"),
        ("returnPath", "TXT", "bounces.good.test", "Success"),
    }
    assert RSA_TXT in run.stdout  # the whole record, ready to paste
    assert run.stderr == ""


def test_json_with_a_base64_secret(server: DnsServer, tmp_path: Path) -> None:
    run = domains(tmp_path, good(server), key_secret("good-dkim", rsa2048_pem(), base64_data=True), args=("--json",))
    assert run.returncode == 0, run.stdout + run.stderr
    body = json.loads(run.stdout)
    [domain] = body["domains"]
    assert (domain["domain"], domain["verified"]) == ("good.test", True)
    dkim = domain["records"][0]
    assert (dkim["purpose"], dkim["status"], dkim["errorType"], dkim["observed"]) == ("dkim", "Success", None, RSA_TXT)
    assert {r["status"] for r in domain["records"]} == {"Success"}


def test_nameserver_precedence(server: DnsServer, tmp_path: Path) -> None:
    secret = key_secret("good-dkim", rsa2048_pem())
    # the domain's own dns.nameservers win over --nameserver
    assert domains(tmp_path, good(server), secret, args=("--nameserver", UNUSED)).returncode == 0
    # --nameserver is used by a domain without its own
    run = domains(tmp_path, good(None), secret, args=("--nameserver", server.nameserver()))
    assert run.returncode == 0, run.stdout + run.stderr


def test_wrong_records_exit_1_and_say_what_to_publish(server: DnsServer, tmp_path: Path) -> None:
    wrong = sending_domain(
        "wrong",
        domain="wrong.test",
        dkim={"selector": SELECTOR, "secretName": "wrong-dkim"},
        spf={"egressIps": [EGRESS]},
        dns={"nameservers": [server.nameserver()]},
    )
    run = domains(
        tmp_path, good(server), key_secret("good-dkim", rsa2048_pem()), wrong, key_secret("wrong-dkim", ed25519_pem())
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SendingDomain good.test: verified" in run.stdout
    assert "SendingDomain wrong.test: NOT verified" in run.stdout
    assert "Failed (INVALID_VALUE)" in run.stdout
    assert "it is a k=rsa key, the signing key is k=ed25519" in run.stdout
    assert f"{EGRESS} gets fail" in run.stdout
    assert "observed: v=spf1 ip4:203.0.113.5 -all" in run.stdout
    assert "Failed (INVALID_VALUE), advisory" in run.stdout  # DMARC is malformed, but not required


def test_a_key_not_in_the_file_shows_what_is_published(server: DnsServer, tmp_path: Path) -> None:
    run = domains(tmp_path, good(server))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Secret good-dkim (spec.dkim.secretName) is not in the file" in run.stderr
    row = next(line for line in run.stdout.splitlines() if line.split()[:1] == ["dkim"])
    assert row.split()[3] == "Pending"
    assert "(key not known locally)" in row
    assert "no key known locally" in run.stdout
    assert f"observed: {RSA_TXT}" in run.stdout


def test_dns_down_is_a_temporary_failure_and_exit_1(server: DnsServer, tmp_path: Path) -> None:
    server.stop()
    run = domains(tmp_path, good(server), key_secret("good-dkim", rsa2048_pem()), args=("--json",))
    assert run.returncode == 1
    records = json.loads(run.stdout)["domains"][0]["records"]
    assert {(r["status"], r["errorType"]) for r in records} == {("TemporaryFailure", "DNS_SERVER_ERROR")}


@pytest.mark.parametrize(
    ("docs", "problem"),
    [
        ([sending_domain("bad", domain="bad.test", dkim={"keyBits": 1000})], "SendingDomain bad: spec.dkim.keyBits: "),
        ([sending_domain("bad", domain="bad.test", spff={})], "SendingDomain bad: spec.spff: unknown field"),
        (
            [
                sending_domain("bad", domain="bad.test", dkim={"selector": "s1", "secretName": "k"}),
                key_secret("k", b"x"),
            ],
            "SendingDomain bad: spec.dkim.secretName: Secret k private.pem: not a usable PEM private key",
        ),
        ([{"kind": "Secret", "metadata": {"name": "x"}}], "no SendingDomain document"),
        ([good(None), good(None)], "domain good.test is declared twice"),
    ],
)
def test_a_refused_file_names_the_field_and_exits_2(tmp_path: Path, docs: list[dict[str, Any]], problem: str) -> None:
    run = domains(tmp_path, *docs, args=("--nameserver", UNUSED))
    assert run.returncode == 2, run.stdout + run.stderr
    assert problem in run.stderr
    assert run.stdout == ""


def test_a_bad_nameserver_flag_exits_2(tmp_path: Path) -> None:
    run = domains(tmp_path, good(None), args=("--nameserver", "dns.example"))
    assert run.returncode == 2
    assert "--nameserver: 'dns.example' must be an IP address, optionally with :port" in run.stderr
