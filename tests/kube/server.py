"""Run the Kubernetes API emulator on 127.0.0.1, in a thread of its own or standalone.

The server gets its own thread and event loop so that sync tests, async tests and a kopf operator thread
can all talk to it. kmock.Server is not used: it patches aiohttp's resolver process-wide and must be
exited in LIFO order, which does not hold for servers that live in other threads.

    python -m tests.kube.server --port 0 --kubeconfig /tmp/kubeconfig [--crd FILE ...] [--stats-path /_stats]
                                [--pod-addresses FILE]

With `--stats-path`, every request is counted by verb and resource (except those whose User-Agent is
`--uncounted-agent`) and the counts are served as JSON at that path: how bench/operator_scale measures the
operator's API traffic while running the emulator as a program of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import signal
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import yaml

from tests.kube.control import ADMIN_TOKEN
from tests.kube.emulator import KubeEmulator, parse_route

T = TypeVar("T")
TOKEN = ADMIN_TOKEN  # the admin's (system:masters); ServiceAccount tokens come from KubeEmulator.mint_token


def write_kubeconfig(
    path: Path, url: str, namespace: str = "default", token: str = TOKEN, ca_pem: bytes | None = None
) -> None:
    """A kubeconfig with a bearer token; kopf and the kubernetes client send it over plain http too, kubectl
    only over https (give the https URL and the CA that signed the emulator's certificate)."""
    cluster: dict[str, Any] = {"server": url}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "emulator",
        "preferences": {},
        "clusters": [{"name": "emulator", "cluster": cluster}],
        "users": [{"name": "emulator", "user": {"token": token}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
        ],
    }
    path.write_text(yaml.safe_dump(config))


Handler = Callable[[aiohttp.web.BaseRequest], Awaitable[aiohttp.web.StreamResponse]]


def register_crds(emulator: KubeEmulator, paths: Iterable[Path]) -> None:
    """Register every CustomResourceDefinition in the manifests at `paths`."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                emulator.register_crd(doc)


async def start(
    emulator: KubeEmulator, port: int = 0, handler: Handler | None = None, tls: ssl.SSLContext | None = None
) -> tuple[aiohttp.web.ServerRunner, str]:
    """Listen on 127.0.0.1:port (0 = any free port); return the runner (for cleanup) and the URL.

    `handler` (default: the emulator) serves the requests, e.g. a wrapper that counts them first.
    With `tls`, the same server also listens with TLS on another free port: ``runner.addresses[1]``.
    """
    await emulator.__aenter__()  # kmock accumulates handler errors only inside its context
    server = aiohttp.web.Server(handler or emulator, handler_cancellation=True)
    runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    if tls is not None:
        await aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    sockets = runner.addresses
    return runner, f"http://127.0.0.1:{sockets[0][1]}"


async def stop(emulator: KubeEmulator, runner: aiohttp.web.ServerRunner) -> None:
    emulator.close_watches()
    await asyncio.sleep(0)  # let the watch streams see the flag and finish their responses
    for connection in list(getattr(runner.server, "connections", [])):
        transport = connection.transport
        if transport is not None and transport.get_extra_info("sslcontext") is not None:
            transport.abort()  # a TLS close waits for the peer's close_notify, which may outlive this loop
    await runner.cleanup()
    await emulator.__aexit__(None, None, None)


async def serve_until_signalled(
    emulator: KubeEmulator, port: int = 0, kubeconfig: Path | None = None, handler: Handler | None = None
) -> None:
    """Standalone mode: `start`, write `kubeconfig`, print the URL, serve until SIGINT or SIGTERM, `stop`."""
    runner, url = await start(emulator, port, handler)
    if kubeconfig:
        write_kubeconfig(kubeconfig, url)
    print(url, flush=True)
    stopped = asyncio.Event()
    loop: Any = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        await stop(emulator, runner)


class ThreadedServer:
    """The emulator served from a background thread; ``call`` runs code on its loop (the emulator is not
    thread-safe, so anything that mutates it from a test thread must go through here)."""

    def __init__(self, emulator: KubeEmulator | None = None, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.emulator = emulator if emulator is not None else KubeEmulator()  # NB: an emulator may be falsy
        self.port = port
        self.tls = tls
        self.url = ""
        self.tls_url = ""  # with `tls`: the https URL of the same server (what kubectl needs to send tokens)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None or not self.url:
            raise RuntimeError("the Kubernetes API emulator did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a synchronous function on the server's loop and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def runner() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        self._loop.call_soon_threadsafe(runner)
        return future.result(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        try:
            runner, self.url = await start(self.emulator, self.port, tls=self.tls)
            if self.tls is not None:
                self.tls_url = f"https://127.0.0.1:{runner.addresses[1][1]}"
        except BaseException as e:
            self._error = e
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await stop(self.emulator, runner)


class RequestCounter:
    """Counts requests by verb and resource, except those sent with the `uncounted` User-Agent."""

    def __init__(self, uncounted: str = "") -> None:
        self.uncounted = uncounted
        self.total = 0
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.last = 0.0

    def count(self, request: aiohttp.web.BaseRequest) -> None:
        if self.uncounted and request.headers.get("User-Agent") == self.uncounted:
            return
        route = parse_route(request.path.rstrip("/"))
        watch = request.query.get("watch") in ("true", "1")
        if route is None or route.resource.plural is None:
            what = "discovery"
        else:
            what = f"{request.method} {route.resource.plural}{'/' + route.sub if route.sub else ''}"
            what += " (watch)" if watch else ""
        self.total += 1
        self.by_kind[what] += 1
        self.last = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.by_kind), "last": self.last, "now": time.monotonic()}


def counting(emulator: KubeEmulator, counter: RequestCounter, stats_path: str) -> Handler:
    """The emulator behind a counter whose figures are served at `stats_path`."""

    async def handler(request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if request.path == stats_path:
            return aiohttp.web.json_response(counter.snapshot())
        counter.count(request)
        return await emulator(request)

    return handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kube.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig pointing at the server here")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="CRD manifest(s) to register")
    parser.add_argument("--stats-path", default="", help="count requests and serve the counts as JSON here")
    parser.add_argument("--uncounted-agent", default="", help="User-Agent whose requests are not counted")
    parser.add_argument(
        "--pod-addresses", type=Path, help="a file of addresses (one a line) the node gives its pods, in order"
    )
    args = parser.parse_args(argv)

    async def serve() -> None:
        emulator = KubeEmulator()
        register_crds(emulator, args.crd)
        if args.pod_addresses:
            emulator.control.node.pod_addresses = args.pod_addresses.read_text().split()
        handler = None
        if args.stats_path:
            handler = counting(emulator, RequestCounter(args.uncounted_agent), args.stats_path)
        await serve_until_signalled(emulator, args.port, args.kubeconfig, handler)

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
