"""A real authoritative DNS server (NSD) on 127.0.0.1 for tests, serving zone files the test writes.

Tests of MX routing, SPF, DKIM, DMARC and DNSBL need real answers, including the edge cases a mock
would get wrong (NXDOMAIN vs NODATA, REFUSED outside the zones, TXT strings split at 255 bytes).
Nothing here ever queries public DNS: the relay is pointed at `DnsServer.nameserver()`.

Usage::

    def test_x(dns_server_factory):
        server = dns_server_factory({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
        spec = DnsSpec(nameservers=[server.nameserver()])
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from bench.peers.ports import free_port

from tests.peers.daemon import Daemon, start_retrying, wait_until_ready

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
START_TIMEOUT = 10.0

ZoneSpec = Mapping[str, list[str]]
"""zone name -> RR lines in zone file syntax, relative to the zone (`@ MX 10 mx`, `mx A 127.0.0.1`)."""


@dataclass
class DnsServer(Daemon):
    """A running NSD instance; `stop` it to test the relay's behaviour with DNS down."""

    name = "nsd"
    log_file = "nsd.log"
    stop_timeout = 5.0
    log_tail = 0  # the whole log

    zones: dict[str, list[str]]

    def nameserver(self) -> str:
        """The `host:port` form `DnsSpec.nameservers` takes."""
        return self.address

    def query(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        """One raw query (UDP with EDNS, TCP when truncated), for tests that look at the answer itself."""
        request = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
        reply, _ = dns.query.udp_with_fallback(request, self.host, port=self.port, timeout=timeout)
        return reply


def txt_rdata(value: str | bytes) -> str:
    """A TXT value as zone-file rdata: quoted, escaped, split into strings of at most 255 bytes.

    DNS TXT character-strings hold 255 bytes each; long SPF or DKIM records are several strings that
    the reader concatenates.
    """
    data = value.encode() if isinstance(value, str) else value
    parts = []
    for start in range(0, max(len(data), 1), 255):
        chunk = data[start : start + 255]
        escaped = "".join(_escape_byte(b) for b in chunk)
        parts.append(f'"{escaped}"')
    return " ".join(parts)


def _escape_byte(b: int) -> str:
    if b in (0x22, 0x5C):
        return f"\\{chr(b)}"
    return chr(b) if 0x20 <= b < 0x7F else f"\\{b:03d}"


_TXT_LINE = re.compile(r"^(?P<head>.*?\s)(?P<type>TXT|SPF)\s+(?P<rdata>.+)$", re.IGNORECASE)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(\d{3}|.)")


def _split_long_txt(line: str) -> str:
    """Rewrite a TXT line whose strings exceed 255 bytes into several strings (NSD refuses them)."""
    match = _TXT_LINE.match(line)
    if not match:
        return line
    rdata = match["rdata"].strip()
    strings = _QUOTED.findall(rdata) if rdata.startswith('"') else [rdata]
    if all(len(_unescape(s)) <= 255 for s in strings):
        return line
    return f"{match['head']}{match['type']} {txt_rdata(b''.join(_unescape(s) for s in strings))}"


def _unescape(text: str) -> bytes:
    """Zone-file string escapes to bytes: \\DDD is one byte, \\X is X, the rest is UTF-8."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode()
        token = m[1]
        out += bytes([int(token)]) if token.isdigit() else token.encode()
        pos = m.end()
    out += text[pos:].encode()
    return bytes(out)


def _zone_text(zone: str, records: list[str]) -> str:
    origin = zone.rstrip(".") + "."
    lines = [f"$ORIGIN {origin}", "$TTL 60"]
    if not any(re.search(r"\sSOA\s", f" {r} ", re.IGNORECASE) for r in records):
        lines.append(f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60")
    if not any(re.search(r"^@?\s.*\sNS\s", f"{r} ", re.IGNORECASE) for r in records):
        lines.append(f"@ IN NS ns.{origin}")
    lines.extend(_split_long_txt(r) for r in records)
    return "\n".join(lines) + "\n"


def _write_config(folder: Path, host: str, port: int, zones: ZoneSpec) -> Path:
    zone_blocks = []
    for zone, records in zones.items():
        name = zone.rstrip(".") or "root"
        (folder / f"{name}.zone").write_text(_zone_text(zone, records))
        zone_blocks.append(f'zone:\n  name: "{zone.rstrip(".") + "."}"\n  zonefile: "{name}.zone"\n')
    config = folder / "nsd.conf"
    config.write_text(
        "server:\n"
        f"  ip-address: {host}@{port}\n"
        f"  port: {port}\n"
        "  do-ip4: yes\n  do-ip6: no\n"
        '  database: ""\n  username: ""\n  chroot: ""\n'
        f'  zonesdir: "{folder}"\n'
        f'  pidfile: "{folder}/nsd.pid"\n'
        f'  xfrdfile: "{folder}/xfrd.state"\n'
        f'  xfrdir: "{folder}"\n'
        f'  zonelistfile: "{folder}/zone.list"\n'
        f'  logfile: "{folder}/nsd.log"\n'
        "  server-count: 1\n  tcp-count: 32\n  verbosity: 1\n  hide-version: yes\n"
        "remote-control:\n  control-enable: no\n" + "".join(zone_blocks)
    )
    return config


def _serves_all_zones(server: DnsServer, pending: list[str]) -> bool:
    """True once the server has answered the SOA of every zone in `pending` authoritatively (NSD loads
    zones after binding); the zones that answered are taken off `pending`."""
    while pending:
        try:
            reply = server.query(pending[0].rstrip(".") + ".", "SOA", timeout=0.05)
        except (dns.exception.Timeout, OSError):
            return False
        if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
            return False
        pending.pop(0)
    return True


def start_dns_server(folder: Path, zones: ZoneSpec, host: str = "127.0.0.1") -> DnsServer:
    """Start NSD in the foreground on a free port of `host`, serving `zones`, and wait until it answers."""
    folder.mkdir(parents=True, exist_ok=True)

    def start_once() -> DnsServer:
        port = free_port(host, udp=True)
        config = _write_config(folder, host, port, zones)
        process = subprocess.Popen([NSD, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = DnsServer(host=host, port=port, zones=dict(zones), folder=folder, process=process)
        pending = list(server.zones)
        wait_until_ready(server, lambda: _serves_all_zones(server, pending), START_TIMEOUT, interval=0.02)
        return server

    # again on a fresh port when NSD fails: the free port may be taken between the probe and NSD's bind
    return start_retrying("nsd", start_once, retry_on=(RuntimeError, TimeoutError))


@pytest.fixture
def dns_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[ZoneSpec], DnsServer]]:
    """Start real authoritative DNS servers for zones the test writes; all are stopped at teardown."""
    if not Path(NSD).exists():
        pytest.skip("nsd is not installed (make test installs the Debian peers)")
    servers: list[DnsServer] = []

    def start(zones: ZoneSpec) -> DnsServer:
        server = start_dns_server(tmp_path_factory.mktemp("nsd"), zones)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
