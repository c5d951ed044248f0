"""A byte-exact blocking SMTP client for tests against relay processes: raw sockets from a chosen loopback address.

Any address in 127.0.0.0/8 is a distinct client on Linux loopback, so one test can be many clients
(an attacker, a trusted application, ...) without touching the per-address state of another.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def raw_client(port: int, source: str = "127.0.0.1", timeout: float = 15.0) -> Iterator[socket.socket]:
    """A TCP connection to 127.0.0.1:port from `source`; closed on exit."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        yield sock
    finally:
        sock.close()


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply (every line of a multi-line one); b"" when the server closed the connection first."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        last = data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if data.endswith(b"\r\n") and len(last) >= 4 and last[3:4] == b" ":
            return data


def command(sock: socket.socket, line: bytes) -> bytes:
    """Send one command line (CRLF added) and return its reply."""
    sock.sendall(line + b"\r\n")
    return read_reply(sock)
