"""Scale-down under load: mail through the pods of a 3-replica SmtpRelay while it scales to 1 (issue 12).

    python -m bench.scale_down [--messages 2000] [--runs 3] [--concurrency 8] [--upstream-outage S]
                               [--upstream-down-during-drain] [--handoff on|off|both] [--quick] [--keep]

Per run, fresh processes: an smtp-sink upstream that dumps every message (to count Message-IDs), the API emulator
whose pods are real `smtp-relay` processes (`python -m tests.harness.relay_cluster`, each pod at its own
127.244.x.y with its claim as a folder), and the real `relayfleet-operator --standalone` against it. The SmtpRelay
starts at 3 replicas; the load (bench/fleet_load.py) goes to the Ready pods' addresses; once a quarter of it was
accepted, spec.replicas becomes 1 (with `--upstream-outage S` the upstream also stops for S seconds from then, so
the leaving pods hold mail while they drain; with `--upstream-down-during-drain` it stops at the scale-down and
comes back only once the StatefulSet runs one pod, or after `--upstream-outage S` (default 60 s), whichever is
first, so the drain can only finish early by handing the leaving pods' mail to the pod that stays).
`--handoff` sets spec.queue.handoff; `both` alternates on and off run by run, so the two are compared in one
interleaved run on the same machine. Reported per run: accepted (got a 250), delivered (distinct
accepted Message-IDs at the sink), lost, duplicates, stranded (unfinished records left in the removed ordinals'
claim folders, read through the spool's API), the scale-down time (from the spec change until the StatefulSet
runs one pod), the load's duration, the messages handed off (the pods' log lines) and whether the upstream was
still down when the StatefulSet shrank, with the load average (the machine may be shared).
Target: lost 0 and stranded 0 in every run (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import BenchError
from bench.fleet_load import LoadReport, account, api_targets, send_load, stranded
from bench.operator_scale import operator_command, stop_process
from bench.peers.ports import free_port
from bench.peers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "smtprelays.relayfleet.io.yaml"
NAMESPACE, NAME = "default", "outbound"
RELAY = f"/apis/relayfleet.io/v1alpha1/namespaces/{NAMESPACE}/smtprelays"
SELECTOR = f"app.kubernetes.io/instance={NAME}"
OPERATOR_ENV = {"RELAYFLEET_TERMINATION_GRACE_SECONDS": "30", "RELAYFLEET_RESYNC_SECONDS": "5"}


@dataclass(frozen=True)
class Settings:
    messages: int
    runs: int
    concurrency: int
    outage: float
    keep: bool
    timeout: float = 180.0
    down_during_drain: bool = False
    handoff: str = "on"
    """on, off or both (alternating run by run)."""

    def handoff_of(self, run: int) -> bool:
        return self.handoff == "on" or (self.handoff == "both" and run % 2 == 0)


@dataclass(frozen=True)
class RunResult:
    accepted: int
    delivered: int
    lost: int
    duplicates: int
    stranded: int
    scale_down_seconds: float
    load_seconds: float
    retried: int
    handoff: bool = True
    handed_off: int = 0
    down_at_shrink: bool = False


class Api:
    """The few API calls of a run, with the kubeconfig's token."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.headers = session, url, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        headers = {**self.headers, "Content-Type": ctype}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as reply:
            if reply.status >= 300:
                raise BenchError(f"{method} {path}: {reply.status} {await reply.text()}")
            return await reply.json()

    async def pods(self) -> list[dict[str, Any]]:
        found = await self.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={SELECTOR}")
        items: list[dict[str, Any]] = found.get("items") or []
        return items


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"not within {seconds:.0f} s: {what}")
        await asyncio.sleep(interval)


def relay_body(listener: int, upstream: int, handoff: bool = True) -> dict[str, Any]:
    spec = {
        "replicas": 3,
        "listeners": [{"name": "relay", "port": listener}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": upstream, "tls": "none"}]}},
        "queue": {"retry": {"schedule": ["1s"]}, "drainTimeout": "10m", "handoff": handoff},
    }
    return {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": NAME}, "spec": spec}


async def measure(settings: Settings, api: Api, sink: SmtpSink, node: Path, handoff: bool) -> RunResult:
    port = free_port()
    claims = node / "claims" / NAMESPACE
    await api.call("POST", RELAY, relay_body(port, sink.port, handoff))

    async def three_ready() -> bool:
        return sum(_ready(p) for p in await api.pods()) == 3

    await until(three_ready, 180, "3 relay pods Ready")  # one after another (OrderedReady); slow on a busy machine
    report = LoadReport()
    targets = api_targets(api.session, api.url, api.headers["Authorization"][7:], NAMESPACE, SELECTOR, port)
    load = asyncio.create_task(
        send_load(
            targets, settings.messages, concurrency=settings.concurrency, deadline=settings.timeout, report=report
        )
    )

    async def a_quarter_accepted() -> bool:
        return len(report.accepted) >= settings.messages // 4 or load.done()

    await until(a_quarter_accepted, settings.timeout, "a quarter of the load accepted", interval=0.02)
    if settings.outage or settings.down_during_drain:
        await asyncio.to_thread(sink.stop)
    started = time.monotonic()
    shrunk = asyncio.Event()
    await api.call("PATCH", f"{RELAY}/{NAME}", {"spec": {"replicas": 1}}, "application/merge-patch+json")
    if settings.outage and not settings.down_during_drain:
        await asyncio.sleep(settings.outage)
        await asyncio.to_thread(sink.start)

    async def bring_back() -> None:
        """--upstream-down-during-drain: the upstream returns once the fleet has shrunk (or the outage ended)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shrunk.wait(), settings.outage or 60.0)
        await asyncio.to_thread(sink.start)

    restart = asyncio.create_task(bring_back()) if settings.down_during_drain else None

    async def one_pod() -> bool:
        sts = await api.call("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{NAME}")
        return bool(sts["spec"]["replicas"] == 1 and len(await api.pods()) == 1)

    await until(one_pod, settings.timeout, "the StatefulSet down to 1 pod")
    scale_down = time.monotonic() - started
    down_at_shrink = not sink.running
    shrunk.set()
    if restart is not None:
        await restart
    await load

    async def all_arrived() -> bool:
        return sink.count() >= len(report.accepted) and not account(report.accepted, _ids(sink)).lost

    with contextlib.suppress(BenchError):  # what did not arrive is reported as lost below
        await until(all_arrived, 60, "every accepted message at the sink")
    result = account(report.accepted, _ids(sink))
    left = sum([await stranded(claims / f"spool-{NAME}-{i}") for i in (1, 2)])
    handed = await asyncio.to_thread(_handed_off, node)
    return RunResult(
        result.accepted, result.delivered, len(result.lost), result.duplicates, left, scale_down, report.seconds,
        sum(report.refused.values()), handoff, handed, down_at_shrink,
    )  # fmt: skip


def _handed_off(node: Path) -> int:
    """Messages the pods handed off, from their log lines (`message <id> handed off to <peer>`)."""
    logs = "".join(p.read_text(errors="replace") for p in node.glob("pods/*/container.log"))
    return len(re.findall(r"message \w+ handed off to http://", logs))


def _ids(sink: SmtpSink) -> list[str]:
    return [str(m.email()["Message-ID"]) for m in sink.messages()]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ok = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ok and not pod["metadata"].get("deletionTimestamp")


def one_run(settings: Settings, workdir: Path, handoff: bool = True) -> RunResult:
    """Fresh sink, cluster and operator; one scale-down under load."""
    workdir.mkdir(parents=True)
    kubeconfig = workdir / "kubeconfig"
    sink = SmtpSink(workdir / "sink", dump=True)
    (workdir / "sink").mkdir()
    cluster_cmd = [sys.executable, "-m", "tests.harness.relay_cluster", "--kubeconfig", str(kubeconfig),
                   "--root", str(workdir / "node"), "--crd", str(CRD)]  # fmt: skip
    with open(workdir / "cluster.log", "wb") as log:
        cluster = subprocess.Popen(cluster_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    operator: subprocess.Popen[Any] | None = None
    try:
        sink.start()
        assert cluster.stdout is not None
        url = cluster.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise BenchError(f"the cluster did not start: {(workdir / 'cluster.log').read_text()[-2000:]}")
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), **OPERATOR_ENV}
        with open(workdir / "operator.log", "wb") as log:
            operator = subprocess.Popen([*operator_command()[:-1], f"--namespace={NAMESPACE}"], cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

        async def go() -> RunResult:
            async with aiohttp.ClientSession() as session:
                return await measure(settings, Api(session, url, token), sink, workdir / "node", handoff)

        return asyncio.run(go())
    finally:
        if operator is not None:
            stop_process(operator)
        stop_process(cluster)
        sink.stop()


def report(settings: Settings, results: list[RunResult]) -> tuple[str, bool]:
    if settings.down_during_drain:
        upstream = f"upstream down from the scale-down until it completed (at most {settings.outage or 60:g} s)"
    else:
        upstream = f"upstream outage {settings.outage:g} s from the scale-down"
    load1, load5, _ = os.getloadavg()
    lines = [
        f"scale_down: 3 -> 1 replicas under load, {settings.messages} messages per run, {settings.concurrency} clients,"
        f" {upstream}; load average {load1:.2f} {load5:.2f} (shared machine)",
        f"{'run':>3} {'handoff':>7} {'accepted':>8} {'delivered':>9} {'lost':>4} {'duplicates':>10} {'stranded':>8}"
        f" {'scale-down s':>12} {'load s':>7} {'retried':>7} {'handed off':>10} {'upstream down at shrink':>23}",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"{i:>3} {'on' if r.handoff else 'off':>7} {r.accepted:>8} {r.delivered:>9} {r.lost:>4} {r.duplicates:>10}"
            f" {r.stranded:>8} {r.scale_down_seconds:>12.1f} {r.load_seconds:>7.1f} {r.retried:>7} {r.handed_off:>10}"
            f" {'yes' if r.down_at_shrink else 'no':>23}"
        )
    passed = all(r.lost == 0 and r.stranded == 0 and r.accepted == settings.messages for r in results)
    lines.append(f"target: lost 0 and stranded 0 in every run   {'PASS' if passed else 'MISS'}")
    return "\n".join(lines), passed


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_down", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=None, help="messages per run (default 2000; 300 quick)")
    parser.add_argument("--runs", type=int, default=None, help="runs, each with fresh processes (default 3; 1 quick)")
    parser.add_argument("--concurrency", type=int, default=8, help="SMTP clients sending at once (default 8)")
    parser.add_argument("--upstream-outage", type=float, default=0.0, help="stop the upstream this long (s)")
    parser.add_argument(
        "--upstream-down-during-drain",
        action="store_true",
        help="stop the upstream at the scale-down, start it once the fleet has shrunk (or after --upstream-outage)",
    )
    parser.add_argument("--handoff", choices=["on", "off", "both"], default="on", help="spec.queue.handoff")
    parser.add_argument("--quick", action="store_true", help="smoke run: one run of 300 messages (about 30 s)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, pods, claims)")
    args = parser.parse_args(argv)
    messages = args.messages if args.messages is not None else (300 if args.quick else 2000)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if messages < 4 or runs < 1 or args.concurrency < 1 or args.upstream_outage < 0:
        parser.error("--messages must be at least 4, --runs and --concurrency at least 1, the outage >= 0")
    return Settings(
        messages,
        runs,
        args.concurrency,
        args.upstream_outage,
        args.keep,
        down_during_drain=args.upstream_down_during_drain,
        handoff=args.handoff,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-scale-down-"))
    results: list[RunResult] = []
    try:
        for i in range(settings.runs):
            results.append(one_run(settings, workdir / f"run-{i + 1}", settings.handoff_of(i)))
    except BenchError as exc:
        print(f"bench failed: {exc} (work dir {workdir})", file=sys.stderr)
        return 1
    finally:
        if not settings.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text, passed = report(settings, results)
    print(text + (f"\nwork dir: {workdir}" if settings.keep else ""))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
