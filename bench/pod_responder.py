"""Relay pods simulated by a small HTTP responder: what the operator's telemetry calls on every resync.

    python -m bench.pod_responder --count 3000 --addresses FILE

bench/operator_scale.py runs this as a process of its own (so its CPU is neither the operator's nor the
emulator's). It listens on `--count` loopback addresses, each on the relays' admin port (9025, where the
operator calls its pods), chosen at random in 127.245.0.0-127.250.255.255 and bound only if free, so two runs on
one machine, or a test's relay at its own address, never collide; the emulator's default pod addresses
(127.244.0.0/16, where nothing listens unless a test runs a relay there) are never taken. It writes the
addresses to FILE, one a line, for the emulator's node to give its pods (`tests.kube.server --pod-addresses`),
prints the URL of its counter, and answers each pod's `GET /queue` as an idle relay does: an empty queue, zero
counters, one config digest. `GET /_responder/stats` on the counter URL: requests answered, by path, and how
many of the addresses were asked.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import random
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp.web

from bench.common import until_stopped
from relay_operator.relays.render.common import ADMIN_PORT

STATS_PATH = "/_responder/stats"
QUEUE_ANSWER = json.dumps(
    {
        "queue": {
            "active": 0,
            "deferred": 0,
            "quarantined": 0,
            "total": 0,
            "oldest_active_age": 0.0,
            "oldest_deferred_age": 0.0,
            "received_total": 0,
            "delivered_total": 0,
            "delivery_failures_total": 0,
            "bounced_total": 0,
            "rejected_total": 0,
        },
        "sessions": 0,
        "config": {"digest": "0" * 16},
    }
).encode()
"""What an idle relay's /queue says (smtp_relay/admin/http.py), the same for every pod."""


def bind_free(count: int, port: int = ADMIN_PORT, seed: int | None = None) -> list[socket.socket]:
    """`count` listening sockets on distinct random loopback addresses at `port`, each bound only if free."""
    rng = random.Random(seed)
    sockets: list[socket.socket] = []
    taken: set[str] = set()
    attempts = 0
    while len(sockets) < count:
        attempts += 1
        if attempts > count * 5 + 100:
            raise RuntimeError(f"only {len(sockets)} of {count} free loopback addresses found at port {port}")
        address = f"127.{rng.randint(245, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if address in taken:
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        sock.listen(64)
        sock.setblocking(False)
        taken.add(address)
        sockets.append(sock)
    return sockets


class Responder:
    """One aiohttp server behind every pod socket and the counter's."""

    def __init__(self) -> None:
        self.by_path: collections.Counter[str] = collections.Counter()
        self.asked: set[str] = set()
        """The pod addresses asked at least once."""
        self.last = 0.0

    async def handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if request.path == STATS_PATH:
            stats = {
                "total": sum(self.by_path.values()),
                "by_path": dict(self.by_path),
                "addresses": len(self.asked),
                "last": self.last,
            }
            return aiohttp.web.json_response(stats)
        self.by_path[f"{request.method} {request.path}"] += 1
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if sockname:
            self.asked.add(str(sockname[0]))
        self.last = time.monotonic()
        if request.method == "GET" and request.path == "/queue":
            return aiohttp.web.Response(body=QUEUE_ANSWER, content_type="application/json")
        return aiohttp.web.Response(status=404)


async def serve(pod_sockets: list[socket.socket]) -> None:
    responder = Responder()
    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(responder.handle), shutdown_timeout=1.0)
    await runner.setup()
    for sock in pod_sockets:
        await aiohttp.web.SockSite(runner, sock).start()
    counter = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await counter.start()
    print(f"http://127.0.0.1:{runner.addresses[-1][1]}", flush=True)
    try:
        await until_stopped()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_responder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True, help="pods to answer for (one address each)")
    parser.add_argument("--addresses", type=Path, required=True, help="write the addresses here, one a line")
    args = parser.parse_args(argv)
    pod_sockets = bind_free(args.count)
    args.addresses.write_text("".join(f"{s.getsockname()[0]}\n" for s in pod_sockets))
    asyncio.run(serve(pod_sockets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
