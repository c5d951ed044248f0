"""A SendingDomain's zone on the real NSD of tests/peers/dns.py, rewritten and reloaded by restarting NSD on
the same port (so the domain's resolver setting stays valid), as a team edits its zone."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from tests.peers.daemon import wait_until_ready
from tests.peers.dns import NSD, START_TIMEOUT, DnsServer, _serves_all_zones, _write_config, txt_rdata

DOMAIN = "example.test"
EGRESS = "192.0.2.10"
SPF = f"@ TXT {txt_rdata(f'v=spf1 ip4:{EGRESS} -all')}"
DMARC = f"_dmarc TXT {txt_rdata('v=DMARC1; p=none')}"


def dkim_line(selector: str, value: str) -> str:
    return f"{selector}._domainkey TXT {txt_rdata(value)}"


def zone(keys: Mapping[str, str] = {}, *extra: str, spf: bool = True, dmarc: bool = True) -> list[str]:
    """The domain's records: its DKIM keys (selector -> TXT), SPF for EGRESS and DMARC unless left out."""
    lines = [dkim_line(selector, value) for selector, value in keys.items()]
    return [*lines, *([SPF] if spf else []), *([DMARC] if dmarc else []), *extra]


def reload(server: DnsServer, records: Sequence[str]) -> None:
    """Serve `records` as the zone of DOMAIN from now on: NSD restarted on its port with the new zone file."""
    server.stop()
    server.zones = {DOMAIN: list(records)}
    config = _write_config(server.folder, server.host, server.port, server.zones)
    server.process = subprocess.Popen(
        [NSD, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pending = [DOMAIN]
    wait_until_ready(server, lambda: _serves_all_zones(server, pending), START_TIMEOUT, interval=0.02)


def expected(status: Mapping[str, object], selector: str) -> str:
    """The TXT value status.records says to publish for `selector`."""
    for record in status.get("records") or []:  # type: ignore[attr-defined]
        if record["purpose"] == "dkim" and record["name"].startswith(f"{selector}._domainkey."):
            return str(record["expected"])
    raise AssertionError(f"no DKIM record for {selector} in {status.get('records')}")
