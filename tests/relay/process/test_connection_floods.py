"""Connection floods against the relay process: every accepted socket is counted, limited and closed.

A client that connects and closes at once used to leave its socket in CLOSE-WAIT for the 300 s idle
timeout, uncounted: a few hundred of them exhausted a relay's descriptors. These tests run the real
process with a lowered RLIMIT_NOFILE, flood it from one address through every stage a connection can
be in, and read its /proc/<pid>/fd, its gauges and its listening sockets (`ss`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from bench.peers.ports import free_port

from tests.harness.raw_smtp import command as _cmd
from tests.harness.raw_smtp import raw_client as _client
from tests.harness.raw_smtp import read_reply as _reply
from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.peers.tls import IssuedCert

pytestmark = pytest.mark.peers

TRUSTED = "127.0.0.2"
"""In allowedNetworks; the flooding client is 127.0.0.1 (raw_client's default source), outside them."""
NOFILE = 256
"""The relay's descriptor limit in these tests: a leak of one socket per connection exhausts it fast."""
FLOOD = 450


def _tls_secret(cert: IssuedCert) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "relay-tls"},
        "stringData": {"tls.crt": cert.cert_pem.decode(), "tls.key": cert.key_pem.decode()},
    }


def _spec(**clients: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "plain", "port": free_port()},
            {"name": "starttls", "port": free_port(), "tls": "starttls"},
            {"name": "smtps", "port": free_port(), "tls": "implicit"},
        ],
        "tls": {"secretName": "relay-tls"},
        "clients": {"allowedNetworks": [f"{TRUSTED}/32"], **clients},
        "policy": {"spam": {"engine": "off"}},
        "routing": {"default": {"capture": {}}},
    }


def _ports(spec: dict[str, Any]) -> dict[str, int]:
    return {listener["name"]: int(listener["port"]) for listener in spec["listeners"]}


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# One connection each, from the attacker's address, ended abruptly at a different stage.
def _close_at_once(ports: dict[str, int]) -> None:
    with _client(ports["plain"]):
        pass


def _reset_at_once(ports: dict[str, int]) -> None:
    with _client(ports["smtps"]) as sock:
        _reset(sock)


def _half_close_after_banner(ports: dict[str, int]) -> None:
    with _client(ports["plain"]) as sock:
        assert _reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO flood.test\r\nMAIL FROM:<a@example.com>\r\n")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the relay closes its side at the EOF: recv returns b"" then
            pass


def _close_in_data(ports: dict[str, int]) -> None:
    with _client(ports["plain"], source=TRUSTED) as sock:
        assert _reply(sock).startswith(b"220 ")
        for line, code in ((b"EHLO flood.test", b"250"), (b"MAIL FROM:<a@example.com>", b"250")):
            assert _cmd(sock, line).startswith(code)
        assert _cmd(sock, b"RCPT TO:<b@example.net>").startswith(b"250")
        assert _cmd(sock, b"DATA").startswith(b"354")
        sock.sendall(b"Subject: cut short\r\n\r\nhalf a messa")


def _close_in_implicit_handshake(ports: dict[str, int]) -> None:
    with _client(ports["smtps"]) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello


def _close_in_starttls_handshake(ports: dict[str, int]) -> None:
    with _client(ports["starttls"]) as sock:
        assert _reply(sock).startswith(b"220 ")
        assert b"STARTTLS" in _cmd(sock, b"EHLO flood.test")
        assert _cmd(sock, b"STARTTLS").startswith(b"220 ")
        sock.sendall(b"\x16\x03\x01\x02\x00")


def _close_after_tls(ports: dict[str, int]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with _client(ports["smtps"]) as raw, context.wrap_socket(raw) as sock:
        assert _reply(sock).startswith(b"220 ")


STAGES: list[Callable[[dict[str, int]], None]] = [
    _close_at_once,
    _reset_at_once,
    _half_close_after_banner,
    _close_in_data,
    _close_in_implicit_handshake,
    _close_in_starttls_handshake,
    _close_after_tls,
]


def _settled(relay: RelayProcess, baseline: int) -> Callable[[], bool]:
    def relay_holds_no_more_descriptors_than_at_baseline() -> bool:
        return relay.open_descriptors() <= baseline

    return relay_holds_no_more_descriptors_than_at_baseline


def _gauges_are_zero(relay: RelayProcess, names: list[str]) -> Callable[[], bool]:
    def every_listener_gauge_is_back_to_zero() -> bool:
        return all(relay.metric("smtp_relay_active_connections", listener=n) == 0 for n in names)

    return every_listener_gauge_is_back_to_zero


def test_connect_and_close_floods_free_every_socket_at_once(relay_factory: Any, server_cert: IssuedCert) -> None:
    spec = _spec()
    ports = _ports(spec)
    relay: RelayProcess = relay_factory(spec, _tls_secret(server_cert), nofile=NOFILE)
    for stage in STAGES:  # warm up: whatever the relay opens lazily (TLS, threads) is in the baseline
        stage(ports)
    wait_for(_gauges_are_zero(relay, list(ports)))
    baseline = relay.open_descriptors()
    for n in range(FLOOD):
        STAGES[n % len(STAGES)](ports)
    wait_for(_settled(relay, baseline), timeout=20)
    wait_for(_gauges_are_zero(relay, list(ports)))
    with _client(ports["plain"]) as sock:
        assert _reply(sock).startswith(b"220 relay.test ESMTP")
    assert relay.http("/livez")[0] == 200


def test_flood_during_the_proxy_header_frees_every_socket(relay_factory: Any, server_cert: IssuedCert) -> None:
    """Behind a balancer every socket comes from one peer; the limit counts the address the header names."""
    spec = _spec(proxyProtocol=True, maxConnectionsPerClient=2)
    ports = _ports(spec)
    relay: RelayProcess = relay_factory(spec, _tls_secret(server_cert), nofile=NOFILE)

    def header(client: str) -> bytes:
        return f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode()

    def partial_header() -> None:
        with _client(ports["plain"]) as sock:
            sock.sendall(b"PROXY TCP4 192.0.2.")

    def whole_header_then_close() -> None:
        with _client(ports["smtps"]) as sock:
            sock.sendall(header("192.0.2.9"))

    flood = [partial_header, whole_header_then_close, lambda: _close_at_once(ports)]
    for kind in flood:
        kind()
    wait_for(_gauges_are_zero(relay, list(ports)))
    baseline = relay.open_descriptors()
    for n in range(FLOOD):
        flood[n % len(flood)]()
    wait_for(_settled(relay, baseline), timeout=20)
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(_client(ports["plain"])) for _ in range(4)]
        for sock, client in zip(sessions, ["192.0.2.9", "192.0.2.9", "192.0.2.9", "192.0.2.10"], strict=True):
            sock.sendall(header(client))
        replies = [_reply(sock)[:4] for sock in sessions]
    assert sorted(replies[:3]) == [b"220 ", b"220 ", b"421 "]  # the third of 192.0.2.9, whichever it is
    assert replies[3] == b"220 "  # another client behind the same balancer


def test_the_gauge_and_the_per_client_limit_count_sockets_from_accept(
    relay_factory: Any, server_cert: IssuedCert
) -> None:
    spec = _spec(maxConnectionsPerClient=3, maxConnectionsPerTrustedClient=5)
    ports = _ports(spec)
    relay: RelayProcess = relay_factory(spec, _tls_secret(server_cert))
    with contextlib.ExitStack() as stack:
        # Three sockets that never start their TLS handshake: no banner yet, but they hold descriptors.
        silent = [stack.enter_context(_client(ports["smtps"])) for _ in range(3)]

        def three_silent_sockets_are_counted() -> bool:
            return relay.metric("smtp_relay_active_connections", listener="smtps") == 3

        wait_for(three_silent_sockets_are_counted)
        with _client(ports["plain"]) as fourth:
            assert _reply(fourth) == b"421 4.7.0 Too many connections from your host, try again later\r\n"
            assert fourth.recv(1) == b""
        with _client(ports["smtps"]) as fifth:  # over the limit on implicit TLS: closed before any handshake
            assert fifth.recv(1) == b""
        assert relay.metric("smtp_relay_rejected_total", reason="connection_limit") == 2
        silent.pop().close()

        def two_silent_sockets_are_left() -> bool:
            return relay.metric("smtp_relay_active_connections", listener="smtps") == 2

        wait_for(two_silent_sockets_are_left)
        with _client(ports["plain"]) as again:
            assert _reply(again).startswith(b"220 ")
        # allowedNetworks have a limit too, a larger one
        trusted = [stack.enter_context(_client(ports["plain"], source=TRUSTED)) for _ in range(5)]
        assert all(_reply(sock).startswith(b"220 ") for sock in trusted)
        with _client(ports["plain"], source=TRUSTED) as sixth:
            assert _reply(sixth).startswith(b"421 4.7.0 Too many connections")
    wait_for(_gauges_are_zero(relay, list(ports)))


def test_the_listen_backlog_is_the_configured_one(relay_factory: Any, server_cert: IssuedCert) -> None:
    spec = _spec()
    relay_factory(spec, _tls_secret(server_cert))
    with open("/proc/sys/net/core/somaxconn") as handle:
        expected = min(512, int(handle.read()))
    for port in _ports(spec).values():
        listing = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.split()
        state, _recv_q, send_q = listing[:3]  # a listening socket's Send-Q is its backlog
        assert (state, int(send_q)) == ("LISTEN", expected), listing
