"""Loopback ports for the peers a run starts: every peer listens on 127.0.0.1 on a port the kernel picks."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST, *, udp: bool = False) -> int:
    """A TCP port the kernel just handed out on `host`, free again once this returns.

    With `udp`, the same port number is also free for UDP (DNS needs both).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port found")


def closed_port(host: str = HOST) -> int:
    """A port with nothing listening on it (bound, then released), so a connect is refused at once."""
    return free_port(host)
