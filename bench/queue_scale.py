"""Queue scale: memory, spool size, recovery after kill -9 and drain rate of a real relay with N queued messages.

    python -m bench.queue_scale [--messages N] [--quick] [--postfix-messages M] [--window W]

`smtp-relay run` queues N messages of 5 KB sent by `smtp-source` while its smarthost (a port where an
`smtp-sink` will listen later) refuses connections; its RSS is read at checkpoints. It is then killed
with SIGKILL and started again (recovery: until /queue reports the whole depth and SMTP answers), the
sink is started and a SIGTERM makes the relay drain its queue (the drain rate). A stock Postfix with
the same unreachable relayhost queues M messages for its memory at the same checkpoints (qmgr's model:
`qmgr_message_active_limit` over the on-disk deferred queue). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from bench.common import BenchError, print_report
from bench.peers.ports import HOST, closed_port, free_port
from bench.peers.postfix import PostfixInstance, make_workdir, postfix_available
from bench.peers.smtp_sink import SmtpSink, wait_for_banner
from bench.relay_vs_postfix import (
    RECIPIENT,
    SENDER,
    SMTP_SOURCE,
    LoopbackDns,
    _memory_kib,
    process_tree,
    relay_manifest,
)

RSS_TARGET_MB = 300.0
SLOPE_TARGET_BYTES = 300.0
RECOVERY_TARGET_S = 60.0
TARGET_COUNT = 1_000_000


@dataclass(frozen=True)
class Settings:
    messages: int
    size: int
    sessions: int
    window: int | None
    postfix_messages: int
    relay: str


@dataclass
class Checkpoint:
    queued: int
    rss_kib: int
    seconds: float
    """Time since the first message was sent."""


@dataclass
class Result:
    relay: list[Checkpoint] = field(default_factory=list)
    postfix: list[Checkpoint] = field(default_factory=list)
    postfix_note: str = ""
    spool_bytes: int = 0
    recovery_s: float = 0.0
    recovered_rss_kib: int = 0
    drain_s: float = 0.0
    drained: int = 0


def checkpoints(total: int) -> list[int]:
    """10k, 100k, then every 100k (200k, 500k at most five of them), and the total."""
    marks = [m for m in (10_000, 20_000, 50_000, 100_000, 200_000, 500_000) if m < total]
    return [*marks, total]


def tree_rss_kib(root: int) -> int:
    return sum(_memory_kib(pid)[0] for pid in process_tree(root))


def disk_bytes(folder: Path) -> int:
    """Bytes the files under `folder` occupy on disk (allocated blocks)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_file():
            total += stat.st_blocks * 512
    return total


def send(host: str, port: int, count: int, settings: Settings) -> None:
    """`count` messages over `sessions` connections (smtp-source -d keeps each session on one connection)."""
    command = [
        SMTP_SOURCE, "-s", str(settings.sessions), "-m", str(count), "-l", str(settings.size), "-d",
        "-f", SENDER, "-t", RECIPIENT, f"{host}:{port}",
    ]  # fmt: skip
    source = subprocess.run(command, capture_output=True, timeout=7200, check=False)
    if source.returncode != 0:
        raise BenchError(f"smtp-source failed: {source.stderr.decode(errors='replace')[-500:]}")


def at_least(count: Callable[[], int], n: int) -> bool:
    return count() >= n


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
    """Seconds until `predicate` held; BenchError after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - started


class Relay:
    """`smtp-relay run` with a spool, an admin token and a smarthost that refuses until the sink starts."""

    def __init__(self, workdir: Path, sink: SmtpSink, dns_port: int, settings: Settings) -> None:
        self.workdir = workdir
        self.port, self.http_port = free_port(), free_port()
        manifest = relay_manifest(self.port, sink, "off", dns_port)
        queue: dict[str, object] = {"retry": {"schedule": ["1h"], "maxAge": "5d"}}
        if settings.window is not None:
            queue["activeWindow"] = settings.window
        spec = manifest["spec"]
        assert isinstance(spec, dict)
        spec["queue"] = queue
        (workdir / "relay.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        self.token = "bench-" + os.urandom(8).hex()
        (workdir / "token").write_text(self.token)
        self.command = [
            settings.relay, "run", "-f", str(workdir / "relay.yaml"), "--spool", str(workdir / "spool"),
            "--host", HOST, "--http-port", str(self.http_port), "--admin-token-file", str(workdir / "token"),
            "--grace", "7200", "--log-level", "WARNING",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.workdir / "relay.log", "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def wait_accepting(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None
        try:
            wait_for_banner(HOST, self.port, timeout, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(f"relay does not accept mail ({exc}):\n{self.log_tail()}") from None

    def queue_total(self) -> int:
        """`total` of /queue (-1 while the HTTP side does not answer yet)."""
        request = urllib.request.Request(
            f"http://{HOST}:{self.http_port}/queue", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(json.load(response)["queue"]["total"])
        except (OSError, ValueError, KeyError):
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"relay exited ({self.proc.returncode}):\n{self.log_tail()}") from None
            return -1

    def rss_kib(self) -> int:
        assert self.proc is not None
        return tree_rss_kib(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        path = self.workdir / "relay.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def queue_relay(relay: Relay, settings: Settings, result: Result) -> None:
    """Send up to each checkpoint, wait until /queue counts it, read the RSS."""
    sent = 0
    started = time.monotonic()
    for mark in checkpoints(settings.messages):
        send(HOST, relay.port, mark - sent, settings)
        sent = mark
        wait_until(partial(at_least, relay.queue_total, mark), 600, f"/queue to count {mark} messages")
        time.sleep(1.0)  # let the first attempts of the last ones settle
        result.relay.append(Checkpoint(mark, relay.rss_kib(), time.monotonic() - started))
        print(f"  relay: {mark:>9,} queued, RSS {result.relay[-1].rss_kib / 1024:.0f} MiB", flush=True)


def queue_postfix(workdir: Path, settings: Settings, result: Result) -> None:
    """The same load into a stock Postfix whose relayhost refuses: its memory with the same deferred queue."""
    if settings.postfix_messages <= 0:
        result.postfix_note = "Postfix skipped (--postfix-messages 0)"
        return
    if not postfix_available():
        result.postfix_note = "Postfix not measured: not installed or not root (make peers)"
        return
    instance = PostfixInstance(workdir, relayhost=(HOST, closed_port()))
    instance.start()
    try:
        master = instance.master_pid()
        if master is None:
            raise BenchError(f"postfix did not start:\n{instance.log_tail()}")
        sent = 0
        started = time.monotonic()
        for mark in checkpoints(settings.postfix_messages):
            send(instance.host, instance.port, mark - sent, settings)
            sent = mark
            wait_until(partial(at_least, instance.queue_count, mark), 600, f"Postfix to queue {mark}", poll=0.5)
            time.sleep(1.0)
            result.postfix.append(Checkpoint(mark, tree_rss_kib(master), time.monotonic() - started))
            print(f"  postfix: {mark:>9,} queued, RSS {result.postfix[-1].rss_kib / 1024:.0f} MiB", flush=True)
    finally:
        instance.stop()


def slope(points: Sequence[Checkpoint]) -> float | None:
    """Bytes of RSS per further queued message from the first checkpoint (10k) to the last."""
    if len(points) < 2 or points[-1].queued == points[0].queued:
        return None
    return (points[-1].rss_kib - points[0].rss_kib) * 1024 / (points[-1].queued - points[0].queued)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(result: Result, settings: Settings) -> str:
    lines = [f"bench/queue_scale: {settings.messages:,} messages of {settings.size} B behind an unreachable upstream"]
    lines.append(f"{'queued':>10} {'relay RSS MiB':>14} {'accept/s':>9} {'postfix RSS MiB':>16}")
    postfix = {c.queued: c for c in result.postfix}
    previous = Checkpoint(0, 0, 0.0)
    for point in result.relay:
        rate = (point.queued - previous.queued) / max(1e-9, point.seconds - previous.seconds)
        pf = postfix.get(point.queued)
        pf_text = f"{pf.rss_kib / 1024:.0f}" if pf else "-"
        lines.append(f"{point.queued:>10,} {point.rss_kib / 1024:>14.0f} {rate:>9.0f} {pf_text:>16}")
        previous = point
    relay_slope, postfix_slope = slope(result.relay), slope(result.postfix)
    if relay_slope is not None:
        lines.append(f"relay RSS per further queued message ({result.relay[0].queued:,} -> {settings.messages:,}): "
                     f"{relay_slope:.0f} B")  # fmt: skip
    if postfix_slope is not None:
        lines.append(f"postfix RSS per further queued message: {postfix_slope:.0f} B (its process tree)")
    if result.postfix_note:
        lines.append(result.postfix_note)
    per_message = result.spool_bytes / max(1, settings.messages)
    lines.append(f"spool on disk: {result.spool_bytes / 2**20:.0f} MiB ({per_message:.0f} B per message)")
    lines.append(
        f"recovery after kill -9: {result.recovery_s:.1f} s until /queue reports {settings.messages:,} and SMTP "
        f"answers (RSS then {result.recovered_rss_kib / 1024:.0f} MiB)"
    )
    rate = result.drained / result.drain_s if result.drain_s else 0.0
    lines.append(f"drain once the upstream is up: {result.drained:,} messages in {result.drain_s:.1f} s = {rate:.0f}/s")
    scale = "" if settings.messages >= TARGET_COUNT else f" (targets are set for {TARGET_COUNT:,}; this ran fewer)"
    final = result.relay[-1].rss_kib * 1024 / 1e6
    lines.append(
        f"RSS at {settings.messages:,} < {RSS_TARGET_MB:.0f} MB: {final:.0f} MB {verdict(final < RSS_TARGET_MB)}"
    )
    if relay_slope is not None:
        ok = relay_slope < SLOPE_TARGET_BYTES
        lines.append(f"RSS per further message < {SLOPE_TARGET_BYTES:.0f} B: {relay_slope:.0f} B {verdict(ok)}")
    ok = result.recovery_s < RECOVERY_TARGET_S
    lines.append(f"recovery < {RECOVERY_TARGET_S:.0f} s: {result.recovery_s:.1f} s {verdict(ok)}{scale}")
    return "\n".join(lines)


def run(settings: Settings) -> str:
    if not Path(SMTP_SOURCE).exists():
        raise BenchError(f"smtp-source not found ({SMTP_SOURCE}): make peers")
    workdir = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    dns = LoopbackDns(["example.net"])
    dns.start()
    (workdir / "sink").mkdir()
    sink = SmtpSink(workdir / "sink", dump=False)
    relay = Relay(workdir, sink, dns.port, settings)
    result = Result()
    try:
        relay.start()
        relay.wait_accepting(60)
        queue_relay(relay, settings, result)
        result.spool_bytes = disk_bytes(workdir / "spool")
        relay.kill()
        started = time.monotonic()
        relay.start()
        wait_until(lambda: relay.queue_total() >= settings.messages, 600, "the recovered depth in /queue")
        relay.wait_accepting(600)
        result.recovery_s = time.monotonic() - started
        result.recovered_rss_kib = relay.rss_kib()
        print(f"  recovered in {result.recovery_s:.1f} s", flush=True)
        sink.start()
        started = time.monotonic()
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)  # the drain: every deferred message is retried at once
        timeout = max(120.0, settings.messages / 200)
        wait_until(lambda: sink.count() >= settings.messages, timeout, "the sink to receive every message", 0.2)
        result.drain_s = time.monotonic() - started
        result.drained = sink.count()
        relay.proc.wait(120)
        relay.proc = None
        queue_postfix(make_workdir(), settings, result)
    finally:
        relay.kill()
        sink.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report(result, settings)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=TARGET_COUNT, help="messages to queue (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, Postfix 20,000: the make test smoke")
    parser.add_argument("--size", type=int, default=5120, help="message payload bytes (default 5120)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (default 20)")
    parser.add_argument("--window", type=int, default=None, help="spec.queue.activeWindow (default: the relay's)")
    parser.add_argument(
        "--postfix-messages", type=int, default=None, help="messages queued into Postfix (default min(N, 100,000))"
    )
    parser.add_argument("--relay", default=None, help="smtp-relay executable (default: next to this Python)")
    args = parser.parse_args(argv)
    messages = 20_000 if args.quick else args.messages
    if messages < 1:
        parser.error("--messages must be positive")
    postfix = args.postfix_messages if args.postfix_messages is not None else min(messages, 100_000)
    relay = args.relay or str(Path(sys.executable).with_name("smtp-relay"))
    return Settings(messages, args.size, args.sessions, args.window, postfix, relay)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    return print_report(lambda: run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
