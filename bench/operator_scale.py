"""The operator at scale: N SmtpRelays against the Kubernetes API emulator, the operator in its own process.

    python -m bench.operator_scale [--count 1000] [--replicas 3] [--concurrency 16] [--rate R] [--idle 60] [--quick]

Four processes: the API emulator (`python -m tests.kube.server` with its request counter; its StatefulSet
controller and node make each relay's pods Running), the pods' stand-in (`python -m bench.pod_responder`: one
loopback address per pod answering the relays' admin `/queue`, the addresses given to the pods through the
emulator's `--pod-addresses`), the real `relayfleet-operator --standalone --all-namespaces` with KUBECONFIG
pointing at the emulator, and this benchmark, which creates the SmtpRelays over HTTP and watches the children
appear. Reported: time from create to all five children present (p50/p95), operator API requests per SmtpRelay,
operator and emulator CPU while idle afterwards (the resync timers ask every pod for its queue), and the
operator's peak RSS. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import yaml

from bench.common import BenchError, print_report
from bench.operator_figures import Result, Settings, cpu_seconds, memory_kib, report

ROOT = Path(__file__).resolve().parents[1]
CRDS = [ROOT / "crds" / "smtprelays.relayfleet.io.yaml", ROOT / "crds" / "sendingdomains.relayfleet.io.yaml"]
BENCH_AGENT = "relayfleet-bench"
"""User-Agent of this benchmark's own requests: the emulator counts every other request as the operator's."""
STATS_PATH = "/_bench/stats"
NAMESPACE = "default"
SELECTOR = "app.kubernetes.io/managed-by=relayfleet-operator"
CHILD_RESOURCES = {  # plural -> API path prefix (cluster-wide, for the watches)
    "configmaps": "/api/v1",
    "services": "/api/v1",
    "statefulsets": "/apis/apps/v1",
    "poddisruptionbudgets": "/apis/policy/v1",
}
RELAYS = "/apis/relayfleet.io/v1alpha1"
RESPONDER_STATS = "/_responder/stats"  # bench/pod_responder.py's counter
STARTUP_SECONDS = 90.0
"""How long the operator may take to start watching: 30 s was too short once on a loaded 2-core VM (load 7)."""


def children_of(name: str) -> list[tuple[str, str]]:
    """(plural, name) of the five children the operator renders (operator/relay_operator/relays/render/)."""
    return [
        ("configmaps", f"{name}-config"),
        ("services", f"{name}-pods"),
        ("services", name),
        ("statefulsets", name),
        ("poddisruptionbudgets", name),
    ]


def relay_body(name: str, replicas: int) -> dict[str, Any]:
    """A small valid SmtpRelay without Secret references (so the operator reads no Secrets)."""
    return {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "listeners": [{"name": "relay", "port": 2525}],
            "clients": {"allowedNetworks": ["10.0.0.0/8"]},
            "routing": {"default": {"smarthosts": [{"host": "smtp.upstream.example", "port": 587}]}},
        },
    }


# --- the benchmark ------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the watches have seen: first appearance of each child, and when each relay became complete."""

    names: list[str]
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    create_rtt: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    rated: set[str] = field(default_factory=set)
    all_rated: asyncio.Event = field(default_factory=asyncio.Event)
    """SmtpRelays whose status.queue has rates: their first two resyncs are done."""
    expired: int = 0

    def __post_init__(self) -> None:
        self._owner = {child: name for name in self.names for child in children_of(name)}
        self._missing = {name: len(children_of(name)) for name in self.names}

    def saw_relay(self, body: dict[str, Any]) -> None:
        """An SmtpRelay's status.queue has its rates once the pods answered two resyncs: its status settled."""
        queue = (body.get("status") or {}).get("queue") or {}
        if "ratesPerMinute" in queue:
            self.rated.add(str((body.get("metadata") or {}).get("name")))
            if len(self.rated) >= len(self.names):
                self.all_rated.set()

    def saw(self, plural: str, name: str, at: float) -> None:
        key = (plural, name)
        if key in self.seen:
            return
        self.seen[key] = at
        owner = self._owner.get(key)
        if owner is None:
            return
        self._missing[owner] -= 1
        if self._missing[owner] == 0:
            self.done[owner] = at
            if len(self.done) == len(self.names):
                self.all_done.set()


class Bench:
    def __init__(self, settings: Settings, url: str, token: str, responder_url: str) -> None:
        self.settings = settings
        self.url = url
        self.responder_url = responder_url
        self.headers = {"User-Agent": BENCH_AGENT, "Authorization": f"Bearer {token}"}

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.url + STATS_PATH) as response:
            result: dict[str, Any] = await response.json()
            return result

    async def pod_stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.responder_url + RESPONDER_STATS) as response:
            result: dict[str, Any] = await response.json()
            return result

    async def watch(
        self, session: aiohttp.ClientSession, plural: str, progress: Progress, ready: asyncio.Event
    ) -> None:
        """Follow one child resource cluster-wide; reconnect from the last resourceVersion, relist on 410."""
        rv = "0"
        while True:
            params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "3600"}
            if plural != "smtprelays":
                params["labelSelector"] = SELECTOR
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            prefix = RELAYS if plural == "smtprelays" else CHILD_RESOURCES[plural]
            async with session.get(f"{self.url}{prefix}/{plural}", params=params, timeout=timeout) as response:
                response.raise_for_status()
                ready.set()
                while line := await response.content.readline():
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        progress.expired += 1
                        rv = "0"  # compacted history: start over with a list-then-watch
                        break
                    meta = obj.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        if plural == "smtprelays":
                            progress.saw_relay(obj)
                        else:
                            progress.saw(plural, str(meta.get("name")), time.monotonic())

    async def create_all(self, session: aiohttp.ClientSession, progress: Progress) -> None:
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        for item in enumerate(progress.names):
            queue.put_nowait(item)
        start = time.monotonic()

        async def worker() -> None:
            while not queue.empty():
                index, name = queue.get_nowait()
                if self.settings.rate:
                    await asyncio.sleep(max(0.0, start + index / self.settings.rate - time.monotonic()))
                sent = time.monotonic()
                async with session.post(
                    f"{self.url}{RELAYS}/namespaces/{NAMESPACE}/smtprelays",
                    json=relay_body(name, self.settings.replicas),
                ) as response:
                    if response.status != 201:
                        raise BenchError(f"create {name}: {response.status} {await response.text()}")
                    await response.read()
                progress.created[name] = time.monotonic()
                progress.create_rtt[name] = progress.created[name] - sent

        await asyncio.gather(*(worker() for _ in range(self.settings.concurrency)))

    async def settle(self, session: aiohttp.ClientSession, quiet: float = 1.0) -> float:
        """Wait until the operator has sent nothing for `quiet` seconds (at most settle_max); return the wait."""
        start = time.monotonic()
        while time.monotonic() - start < self.settings.settle_max:
            snap = await self.stats(session)
            if snap["now"] - snap["last"] >= quiet:
                break
            await asyncio.sleep(0.2)
        return time.monotonic() - start

    async def first_resyncs(
        self, session: aiohttp.ClientSession, progress: Progress, result: Result, operator_pid: int
    ) -> None:
        """Wait (at most `first_resyncs_max`) until every relay's first two resyncs wrote status.queue and its rates:
        a transient, measured apart, so that the idle window that follows is the steady state."""
        s, start, cpu0, before = self.settings, time.monotonic(), cpu_seconds(operator_pid), await self.stats(session)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.all_rated.wait(), s.first_resyncs_max)
        after = await self.stats(session)
        result.transient_wall = time.monotonic() - start
        result.transient_pct = 100 * (cpu_seconds(operator_pid) - cpu0) / max(result.transient_wall, 1e-9)
        result.transient_status_writes = after["by_kind"].get("PATCH smtprelays/status", 0) - before["by_kind"].get(
            "PATCH smtprelays/status", 0
        )
        result.rated = len(progress.rated)

    async def wait_operator_ready(self, session: aiohttp.ClientSession, pid: int, deadline: float) -> None:
        """Ready once the operator watches SmtpRelays and StatefulSets."""
        wanted = {"GET smtprelays (watch)", "GET statefulsets (watch)"}
        while time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{pid}"):  # noqa: ASYNC240 - a cheap /proc lookup
                raise BenchError("the operator exited during start-up")
            if wanted <= set((await self.stats(session))["by_kind"]):
                return
            await asyncio.sleep(0.1)
        raise BenchError("the operator did not start watching within the start-up timeout")

    async def run(self, operator_pid: int, emulator_pid: int, responder_pid: int) -> Result:
        s = self.settings
        names = [f"bench-{i:05d}" for i in range(s.count)]
        progress = Progress(names)
        connector = aiohttp.TCPConnector(limit=s.concurrency + len(CHILD_RESOURCES) + 4)
        async with aiohttp.ClientSession(headers=self.headers, connector=connector) as session:
            await self.wait_operator_ready(session, operator_pid, time.monotonic() + STARTUP_SECONDS)
            watched = [*CHILD_RESOURCES, "smtprelays"]
            readies = [asyncio.Event() for _ in watched]
            watches = [
                asyncio.create_task(self.watch(session, plural, progress, ready))
                for plural, ready in zip(watched, readies, strict=True)
            ]
            try:
                await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
                await asyncio.sleep(0.5)  # let start-up traffic (discovery, initial lists) finish
                result = Result(settings=s, rss_start_kib=memory_kib(operator_pid).get("VmRSS", 0))
                load_start = os.getloadavg()[0]
                before = await self.stats(session)
                cpu0, ecpu0, t0 = cpu_seconds(operator_pid), cpu_seconds(emulator_pid), time.monotonic()
                creating = asyncio.create_task(self.create_all(session, progress))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(progress.all_done.wait()), s.timeout)
                if not creating.done():
                    creating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await creating
                result.create_seconds = max(progress.created.values(), default=t0) - t0
                result.all_children_seconds = time.monotonic() - t0
                result.settle_seconds = await self.settle(session)
                after = await self.stats(session)
                result.busy_cpu = cpu_seconds(operator_pid) - cpu0
                result.busy_emulator_cpu = cpu_seconds(emulator_pid) - ecpu0
                result.busy_wall = time.monotonic() - t0
                result.requests = after["total"] - before["total"]
                result.by_kind = collections.Counter(after["by_kind"])
                result.by_kind.subtract(before["by_kind"])

                await self.first_resyncs(session, progress, result, operator_pid)
                after = await self.stats(session)
                pods_before = await self.pod_stats(session)
                cpu1, ecpu1, t1 = cpu_seconds(operator_pid), cpu_seconds(emulator_pid), time.monotonic()
                rcpu1 = cpu_seconds(responder_pid)
                await asyncio.sleep(s.idle)
                cpu2, ecpu2, t2 = cpu_seconds(operator_pid), cpu_seconds(emulator_pid), time.monotonic()
                rcpu2 = cpu_seconds(responder_pid)
                idle_stats, pods_after = await self.stats(session), await self.pod_stats(session)
                result.idle_responder_pct = 100 * (rcpu2 - rcpu1) / (t2 - t1)
                result.pod_requests, result.pods_answering = pods_after["total"], pods_after["addresses"]
                result.idle_pod_requests = pods_after["total"] - pods_before["total"]
                result.load = (load_start, os.getloadavg()[0])
                result.idle_pct = 100 * (cpu2 - cpu1) / (t2 - t1)
                result.idle_emulator_pct = 100 * (ecpu2 - ecpu1) / (t2 - t1)
                result.idle_requests = idle_stats["total"] - after["total"]
                result.idle_by_kind = collections.Counter(idle_stats["by_kind"])
                result.idle_by_kind.subtract(after["by_kind"])
                result.idle_wall = t2 - t1
                memory = memory_kib(operator_pid)
                result.rss_peak_kib, result.rss_end_kib = memory.get("VmHWM", 0), memory.get("VmRSS", 0)
                result.emulator_rss_peak_kib = memory_kib(emulator_pid).get("VmHWM", 0)
            finally:
                for task in watches:
                    task.cancel()
                await asyncio.gather(*watches, return_exceptions=True)
        result.latencies = sorted(
            progress.done[n] - progress.created[n] for n in progress.done if n in progress.created
        )
        result.create_rtts = sorted(progress.create_rtt.values())
        result.created = len(progress.created)
        result.complete = len(progress.done)
        result.expired = progress.expired
        return result


def read_token(kubeconfig: Path) -> str:
    config = yaml.safe_load(kubeconfig.read_text())
    return str(config["users"][0]["user"]["token"])


def emulator_command(kubeconfig: Path, pod_addresses: Path) -> list[str]:
    """The emulator as a program of its own (run, not imported: the benchmarks never import the tests)."""
    crds = [arg for path in CRDS for arg in ("--crd", str(path))]
    return [
        sys.executable, "-m", "tests.kube.server", "--kubeconfig", str(kubeconfig), *crds,
        "--stats-path", STATS_PATH, "--uncounted-agent", BENCH_AGENT, "--pod-addresses", str(pod_addresses),
    ]  # fmt: skip


def start_responder(pods: int, addresses: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """The pods' stand-in (bench/pod_responder.py), listening once it printed its URL."""
    command = [sys.executable, "-m", "bench.pod_responder", "--count", str(pods), "--addresses", str(addresses)]
    with open(log, "wb") as errors:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        stop_process(proc)
        raise BenchError(f"the pod responder did not start: {log.read_text()[-2000:]}")
    return proc, url


def operator_command() -> list[str]:
    script = Path(sys.executable).parent / "relayfleet-operator"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "relay_operator"]
    return [*base, "--standalone", "--all-namespaces"]


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count_errors(log: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        text = log.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "Traceback" in line or "[ERROR" in line)
    return 0


def run(settings: Settings) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-operator-scale-"))
    kubeconfig = workdir / "kubeconfig"
    operator_log = workdir / "operator.log"
    addresses = workdir / "pod-addresses"
    responder, responder_url = start_responder(settings.count * settings.replicas, addresses, workdir / "pods.log")
    emulator = subprocess.Popen(
        emulator_command(kubeconfig, addresses),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "emulator.log", "wb"),  # noqa: SIM115 - the child owns it
        text=True,
    )
    operator: subprocess.Popen[Any] | None = None
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise BenchError(f"the emulator did not start: {(workdir / 'emulator.log').read_text()[-2000:]}")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        with open(operator_log, "wb") as log:
            operator = subprocess.Popen(operator_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        bench = Bench(settings, url, read_token(kubeconfig), responder_url)
        result = asyncio.run(bench.run(operator.pid, emulator.pid, responder.pid))
        if operator.poll() is not None:
            raise BenchError(f"the operator exited ({operator.returncode}); log: {operator_log}")
        result.operator_errors = count_errors(operator_log)
        text = report(result)
        if result.complete < settings.count:
            raise BenchError(
                f"{text}\n\nonly {result.complete} of {settings.count} SmtpRelays got all children within "
                f"{settings.timeout:.0f} s; operator log: {operator_log}"
            )
        return text
    finally:
        if operator is not None:
            stop_process(operator)
        stop_process(emulator)
        stop_process(responder)
        if not settings.keep:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=None, help="SmtpRelays to create (default 1000; 50 with --quick)")
    parser.add_argument("--replicas", type=int, default=3, help="pods per SmtpRelay (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight at once (default 16)")
    parser.add_argument("--rate", type=float, default=None, help="pace the creates at this many per second")
    parser.add_argument(
        "--idle", type=float, default=None, help="idle window in seconds (default 60 = one resync interval; 5 quick)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="give up on missing children after this long")
    parser.add_argument(
        "--first-resyncs-max",
        type=float,
        default=240.0,
        help="before the idle window, wait at most this long for every relay's first two resyncs (default 240 s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 relays, 5 s idle window (about 15 s)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (kubeconfig, operator log)")
    args = parser.parse_args(argv)
    count = args.count if args.count is not None else (50 if args.quick else 1000)
    if count < 1 or args.concurrency < 1 or args.replicas < 1:
        parser.error("--count, --replicas and --concurrency must be at least 1")
    return Settings(
        count=count,
        replicas=args.replicas,
        concurrency=args.concurrency,
        rate=args.rate,
        idle=args.idle if args.idle is not None else (5.0 if args.quick else 60.0),
        timeout=args.timeout if args.timeout is not None else max(60.0, count * 0.5),
        settle_max=5.0 if args.quick else 30.0,
        first_resyncs_max=0.0 if args.quick else args.first_resyncs_max,
        keep=args.keep,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    return print_report(lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())
