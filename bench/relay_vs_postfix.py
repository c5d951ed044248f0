"""Relay vs Postfix on this machine: throughput, CPU, memory and latency, both with fsync before the 250.

    python -m bench.relay_vs_postfix [--rounds N] [--messages M ...] [--sessions S] [--size BYTES] [--quick]

Both servers relay to the same real `smtp-sink` (counting only, no dumps) and are loaded by Postfix's
`smtp-source`. Runs of the two targets are interleaved within one invocation, because on a shared VM
only ratios measured side by side mean anything. Postfix runs with its stock durability (cleanup fsyncs
the queue file before smtpd answers 250); the relay keeps its own (a 250 only after fdatasync).
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import yaml

from bench.common import BenchError, print_report
from bench.dkim_targets import DkimKeyFile, PostfixDkimTarget, relay_signed
from bench.limits_targets import BenchRedis, check_decided_in_redis, limits_spec, rate_limits, redis_cost_lines
from bench.peers.ports import HOST, free_port
from bench.peers.postfix import PostfixInstance, make_workdir, postfix_available
from bench.peers.smtp_sink import SmtpSink, wait_for_banner

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "from@example.com"
RECIPIENT = "to@example.net"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc accounting ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [11..14] utime stime cutime cstime."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and all its descendants (zombies included: their CPU is not yet in the parent's cutime)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of the tree, counting exited children once (through their parents' cutime/cstime)."""
    ticks = 0
    for pid in process_tree(root):
        if (fields := _stat(pid)) is not None:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLK_TCK


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares libraries and shared memory fairly between processes."""
    rss = pss = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


class PeakMemory(threading.Thread):
    """Samples the summed RSS and PSS of process trees every `interval` seconds and keeps the peaks."""

    def __init__(self, roots: Sequence[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        for pid in (pid for root in self.roots for pid in process_tree(root)):
            one_rss, one_pss = _memory_kib(pid)
            rss += one_rss
            pss += one_pss
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.interval):
            self.sample()

    def finish(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


# --- a loopback DNS for the relay ------------------------------------------------------------------


class LoopbackDns(threading.Thread):
    """Answers the relay's recipient-domain check (MX of the test domains) on 127.0.0.1; NXDOMAIN otherwise.

    The relay refuses recipients whose domain has no MX or address (Postfix, configured as a plain relay
    for mynetworks, does not look). This machine's resolver answers NXDOMAIN for everything, so the relay
    gets this server; it caches the answer, so it costs the relay one query per domain, not one per message.
    """

    def __init__(self, domains: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.domains = {dns.name.from_text(domain) for domain in domains}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port: int = self.sock.getsockname()[1]
        self.queries = 0

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        if question.name not in self.domains:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.MX:
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "MX", "10 mx.example.net."))
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", HOST))
        return response.to_wire()

    def run(self) -> None:
        while True:
            try:
                wire, client = self.sock.recvfrom(4096)
            except OSError:
                return  # socket closed by stop()
            self.queries += 1
            with contextlib.suppress(dns.exception.DNSException, IndexError):
                self.sock.sendto(self.answer(wire), client)

    def stop(self) -> None:
        self.sock.close()


# --- targets ---------------------------------------------------------------------------------------


class Target(Protocol):
    """A relay being measured: it listens on host:port and relays to the sink."""

    name: str
    host: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def root_pids(self) -> list[int]:
        """The processes whose trees are the whole server (CPU and memory are summed over them)."""
        ...


class PostfixTarget:
    """Stock Postfix (fsync before 250), relaying to the sink."""

    name = "postfix"

    def __init__(self, sink: SmtpSink) -> None:
        self.instance = PostfixInstance(make_workdir(), relayhost=(sink.host, sink.port))
        self.host, self.port = self.instance.host, self.instance.port

    def start(self) -> None:
        self.instance.start()

    def stop(self) -> None:
        self.instance.stop()
        shutil.rmtree(self.instance.workdir, ignore_errors=True)

    def root_pids(self) -> list[int]:
        pid = self.instance.master_pid()
        if pid is None:
            raise BenchError(f"postfix is not running:\n{self.instance.log_tail()}")
        return [pid]


def relay_manifest(
    listen_port: int,
    sink: SmtpSink,
    policy: Literal["off", "default"],
    dns_port: int,
    limits: dict[str, object] | None = None,
) -> dict[str, object]:
    """The SmtpRelay under test.

    policy "off": no spam scoring, SPF or attachment checks (the bare relay); "default": as shipped.
    `limits` (`--limits redis`): spec.limits, with the benchmark's never-reached rate limits.
    """
    spec: dict[str, object] = {
        "replicas": 1,
        "listeners": [{"name": "smtp", "port": listen_port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "routing": {"default": {"smarthosts": [{"host": sink.host, "port": sink.port, "tls": "none"}]}},
        "dns": {"nameservers": [f"{HOST}:{dns_port}"]},
    }
    policy_spec: dict[str, object] = {}
    if policy == "off":
        policy_spec = {"spam": {"engine": "off"}, "ipAuthority": {"spf": "off"}, "attachments": {"enabled": False}}
    if limits is not None:
        policy_spec["rateLimits"] = rate_limits()
        spec["limits"] = limits
    if policy_spec:
        spec["policy"] = policy_spec
    return {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": spec,
    }


class RelayTarget:
    """`smtp-relay run` as a subprocess with its own spool, relaying to the sink."""

    def __init__(
        self,
        sink: SmtpSink,
        policy: Literal["off", "default"],
        extra_args: Sequence[str],
        launcher: Sequence[str],
        dns_port: int,
        name: str = "relay",
        limits: dict[str, object] | None = None,
    ) -> None:
        self.name = name
        self.host, self.port = HOST, free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
        self.manifest = self.workdir / "relay.yaml"
        manifest = relay_manifest(self.port, sink, policy, dns_port, limits)
        self.manifest.write_text(yaml.safe_dump(manifest, sort_keys=False))
        self.log = self.workdir / "relay.log"
        self.http_port = free_port()
        self.command = [
            *launcher, "run", "-f", str(self.manifest), "--spool", str(self.workdir / "spool"),
            "--host", HOST, "--http-port", str(self.http_port), *extra_args,
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                self.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        proc = self._proc
        try:
            wait_for_banner(self.host, self.port, 30.0, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise BenchError(f"relay did not start ({exc}): {' '.join(self.command)}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def root_pids(self) -> list[int]:
        if self._proc is None or self._proc.poll() is not None:
            raise BenchError(f"relay is not running:\n{self.log_tail()}")
        return [self._proc.pid]


# --- measurements ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One load run of one target."""

    target: str
    per_session: int
    messages: int
    accept_seconds: float
    e2e_seconds: float
    cpu_seconds: float
    peak_rss_kib: int
    peak_pss_kib: int

    @property
    def accepted_rate(self) -> float:
        return self.messages / self.accept_seconds

    @property
    def e2e_rate(self) -> float:
        return self.messages / self.e2e_seconds

    @property
    def per_cpu_second(self) -> float:
        return self.messages / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")


def wait_for_sink(sink: SmtpSink, target_count: int, timeout: float, poll: float = 0.002) -> None:
    """Poll the sink's counter (a 200-byte read) until it reaches target_count."""
    deadline = time.perf_counter() + timeout
    while sink.count() < target_count:
        if time.perf_counter() > deadline:
            raise BenchError(f"sink has {sink.count()} of {target_count} messages after {timeout}s")
        time.sleep(poll)


def load_run(
    target: Target, sink: SmtpSink, sessions: int, per_session: int, size: int, settle: float, min_messages: int = 0
) -> Run:
    """smtp-source with `sessions` parallel connections, each sending about `per_session` messages (-d).

    When sessions x per_session is below `min_messages`, smtp-source runs again (new sessions of the
    same length) until that many were sent, timed as one run: a 200-message run lasts a fifth of a
    second, too short to measure on a shared VM.
    """
    batch = sessions * per_session
    batches = max(1, -(-min_messages // batch))
    total = batch * batches
    base = sink.count()
    roots = target.root_pids()
    memory = PeakMemory(roots)
    cpu_before = sum(tree_cpu_seconds(root) for root in roots)
    memory.start()
    command = [
        SMTP_SOURCE, "-s", str(sessions), "-m", str(batch), "-l", str(size), "-d",
        "-f", SENDER, "-t", RECIPIENT, f"{target.host}:{target.port}",
    ]  # fmt: skip
    started = time.perf_counter()
    for _ in range(batches):
        source = subprocess.run(command, capture_output=True, timeout=600, check=False)
        if source.returncode != 0:
            memory.finish()
            raise BenchError(f"smtp-source against {target.name} failed: {source.stderr.decode(errors='replace')}")
    accepted = time.perf_counter() - started
    wait_for_sink(sink, base + total, timeout=300)
    delivered = time.perf_counter() - started
    time.sleep(settle)  # queue clean-up after delivery is part of the cost; it is not part of the time
    cpu = sum(tree_cpu_seconds(root) for root in roots) - cpu_before
    memory.finish()
    return Run(target.name, per_session, total, accepted, delivered, cpu, memory.peak_rss_kib, memory.peak_pss_kib)


@dataclass
class Latency:
    """End of DATA to 250, paced at a fixed offered rate."""

    target: str
    rate: float
    samples: list[float] = field(default_factory=list)
    late: int = 0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def _reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError("server closed the connection")
        if line[3:4] != b"-":
            if not line.startswith(expect):
                raise BenchError(f"expected {expect.decode()}, got {line!r}")
            return


def probe_body(size: int) -> bytes:
    """Headers and `size` bytes of 76-character lines; no final CRLF (the terminator brings it)."""
    line = b"X" * 76 + b"\r\n"
    payload = (line * (size // len(line) + 1))[:size].rstrip(b"\r\n")
    headers = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: latency probe\r\n\r\n".encode()
    return headers + payload


async def latency_probe(
    host: str, port: int, *, name: str, rate: float, count: int, connections: int, size: int
) -> Latency:
    """Offer `count` messages at `rate` msg/s over `connections` kept-open sessions; time "\\r\\n.\\r\\n" to 250.

    A message whose slot comes while every connection is busy starts late; those are counted, since
    they mean the offered rate was not reached.
    """
    result = Latency(name, rate)
    body = probe_body(size)
    mail, rcpt = b"MAIL FROM:<%s>\r\n" % SENDER.encode(), b"RCPT TO:<%s>\r\n" % RECIPIENT.encode()
    loop = asyncio.get_running_loop()
    next_index = 0
    start = loop.time() + 0.2

    async def worker() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await _reply(reader, b"220")
            writer.write(b"EHLO latency.probe\r\n")
            await _reply(reader, b"250")
            while next_index < count:
                index, next_index = next_index, next_index + 1
                delay = start + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.005:
                    result.late += 1
                writer.write(mail)
                await _reply(reader, b"250")
                writer.write(rcpt)
                await _reply(reader, b"250")
                writer.write(b"DATA\r\n")
                await _reply(reader, b"354")
                writer.write(body)
                await writer.drain()
                sent = time.perf_counter()
                writer.write(b"\r\n.\r\n")
                await _reply(reader, b"250")
                result.samples.append(time.perf_counter() - sent)
            writer.write(b"QUIT\r\n")
            await _reply(reader, b"221")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return result


# --- orchestration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rounds: int
    per_session: tuple[int, ...]
    sessions: int
    size: int
    targets: tuple[str, ...]
    """"relay" (policy off, or the one --policy given), "relay+pol" (--policy both: the shipped policy), "postfix"."""
    policy: Literal["off", "default", "both"]
    relay_args: tuple[str, ...]
    relay_executable: str
    baseline_executable: str | None
    """Another build's smtp-relay (`--baseline-relay`): target "baseline", for before/after figures in one run."""
    latency_seconds: float
    settle: float
    min_messages: int
    dkim: bool = False
    """`--dkim`: "relay+dkim" (the relay signing with RSA-2048) beside "relay", and "postfix+dkim"
    (Postfix with the OpenDKIM milter) instead of "postfix"."""
    limits: Literal["off", "redis"] = "off"
    """`--limits redis`: "relay+redis" (rate limits counted in a loopback Redis) beside "relay" (the same
    limits counted locally); bench/limits_targets.py."""


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_vs_postfix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; medians are shown)")
    parser.add_argument("--messages", type=int, nargs="+", default=None, help="messages per session (default 10 100)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (default 20)")
    parser.add_argument("--size", type=int, default=5120, help="message payload bytes (default 5120)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 round, 10 and 50 per session, 2 s probes")
    parser.add_argument(
        "--policy",
        choices=["off", "default", "both"],
        default="off",
        help="relay policy (default off: bare; both: a bare and a default-policy relay in the same run)",
    )
    parser.add_argument("--targets", default="relay,postfix", help="comma-separated subset of relay,postfix")
    parser.add_argument("--relay-arg", action="append", default=[], help="extra `smtp-relay run` argument (repeat)")
    parser.add_argument("--relay", default=None, help="smtp-relay executable (default: next to this Python)")
    parser.add_argument(
        "--baseline-relay",
        default=None,
        help="another build's smtp-relay (e.g. an older commit's venv): measured as target 'baseline', interleaved",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="add the relay signing with RSA-2048 (relay+dkim) and sign Postfix's mail with OpenDKIM (postfix+dkim)",
    )
    parser.add_argument(
        "--limits",
        choices=["off", "redis"],
        default="off",
        help="redis: add relay+redis (rate limits counted in a loopback redis-server) beside relay (the same limits"
        " counted locally), to measure what fleet-wide limits cost",
    )
    parser.add_argument("--latency-seconds", type=float, default=None, help="length of each latency probe (0: skip)")
    parser.add_argument(
        "--min-messages",
        type=int,
        default=None,
        help="repeat smtp-source within a run until this many messages were sent (default 1000; --quick 0)",
    )
    args = parser.parse_args(argv)
    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    if not targets or set(targets) - {"relay", "postfix"}:
        parser.error("--targets takes relay, postfix or both")
    if args.policy == "both" and "relay" in targets:
        at = targets.index("relay") + 1
        targets = (*targets[:at], "relay+pol", *targets[at:])
    if args.dkim:
        targets = tuple("postfix+dkim" if name == "postfix" else name for name in targets)
        if "relay" in targets:
            at = targets.index("relay") + 1
            targets = (*targets[:at], "relay+dkim", *targets[at:])
    if args.limits == "redis":
        if "relay" not in targets:
            parser.error("--limits redis compares against target relay")
        at = targets.index("relay") + 1
        targets = (*targets[:at], "relay+redis", *targets[at:])
    if args.baseline_relay:
        # with --limits redis the baseline build counts the same limits in Redis: before/after of relay+redis
        targets = ("baseline+redis" if args.limits == "redis" else "baseline", *targets)
    per_session = args.messages or ([10, 50] if args.quick else [10, 100])
    latency = args.latency_seconds if args.latency_seconds is not None else (2.0 if args.quick else 5.0)
    relay = args.relay or str(Path(sys.executable).with_name("smtp-relay"))
    return Settings(
        rounds=1 if args.quick else args.rounds, per_session=tuple(per_session), sessions=args.sessions,
        size=args.size, targets=targets, policy=args.policy, relay_args=tuple(args.relay_arg),
        relay_executable=relay, baseline_executable=args.baseline_relay, latency_seconds=latency,
        settle=0.2 if args.quick else 0.5,
        min_messages=args.min_messages if args.min_messages is not None else (0 if args.quick else 1000),
        dkim=args.dkim, limits=args.limits,
    )  # fmt: skip


def _median(runs: Sequence[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def report(runs: Sequence[Run], latencies: Sequence[Latency], settings: Settings) -> str:
    lines = [
        f"relay vs Postfix: {settings.sessions} sessions, {settings.size} B messages, "
        f"{settings.rounds} round(s), medians; relay policy {settings.policy}; fsync before 250 on both",
        "",
        f"{'msgs/sess':>9} {'target':<9} {'accepted/s':>10} {'e2e/s':>8} {'CPU s':>7} {'msg/CPU-s':>9} "
        f"{'peak RSS MiB':>12} {'peak PSS MiB':>12}",
    ]
    columns: list[tuple[str, Callable[[Run], float]]] = [
        ("accepted/s", lambda r: r.accepted_rate),
        ("e2e/s", lambda r: r.e2e_rate),
        ("CPU s", lambda r: r.cpu_seconds),
        ("msg/CPU-s", lambda r: r.per_cpu_second),
        ("peak RSS MiB", lambda r: r.peak_rss_kib / 1024),
        ("peak PSS MiB", lambda r: r.peak_pss_kib / 1024),
    ]
    for per_session in settings.per_session:
        medians: dict[str, list[float]] = {}
        for target in settings.targets:
            chosen = [r for r in runs if r.target == target and r.per_session == per_session]
            if not chosen:
                continue
            medians[target] = [_median(chosen, value) for _, value in columns]
            acc, e2e, cpu, per_cpu, rss, pss = medians[target]
            lines.append(
                f"{per_session:>9} {target:<9} {acc:>10.0f} {e2e:>8.0f} {cpu:>7.2f} {per_cpu:>9.0f} "
                f"{rss:>12.1f} {pss:>12.1f}"
            )
        for relay, reference in (("relay", "postfix"), ("relay+pol", "postfix"), ("relay+dkim", "postfix+dkim")):
            if relay in medians and reference in medians:
                ratio = [a / b if b else float("nan") for a, b in zip(medians[relay], medians[reference], strict=True)]
                acc, e2e, cpu, per_cpu, rss, pss = ratio
                lines.append(
                    f"{per_session:>9} {'ratio':<9} {acc:>9.2f}x {e2e:>7.2f}x {cpu:>6.2f}x {per_cpu:>8.2f}x "
                    f"{rss:>11.2f}x {pss:>11.2f}x   ({relay} / {reference})"
                )
        if "relay" in medians and "relay+dkim" in medians:
            bare, signed = medians["relay"], medians["relay+dkim"]
            lines.append(
                f"{per_session:>9} {'dkim':<9} {signed[0] / bare[0]:>9.2f}x {signed[1] / bare[1]:>7.2f}x "
                f"{'':>7} {signed[3] / bare[3]:>8.2f}x    (relay+dkim / relay: what RSA-2048 signing keeps)"
            )
        if "relay" in medians and "baseline" in medians:
            now, before = medians["relay"], medians["baseline"]
            lines.append(
                f"{per_session:>9} {'change':<9} {now[0] / before[0] - 1:>+9.1%}  {now[1] / before[1] - 1:>+7.1%}  "
                f"{'':>7} {now[3] / before[3] - 1:>+8.1%}    (relay against the baseline build)"
            )
        lines += redis_cost_lines(per_session, medians, runs)
        if "relay" in medians and "relay+pol" in medians:
            bare, full = medians["relay"], medians["relay+pol"]
            lines.append(
                f"{per_session:>9} {'policy':<9} {1 - full[0] / bare[0]:>9.0%}  {1 - full[1] / bare[1]:>7.0%}  "
                f"{'':>7} {1 - full[3] / bare[3]:>8.0%}    (what the default policy chain costs the relay)"
            )
    if latencies:
        lines += ["", "latency from end of DATA to 250, at half of each target's peak accepted rate (10 msgs/session):"]
        lines.append(f"{'target':<9} {'rate/s':>7} {'n':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'late':>5}")
        for lat in latencies:
            lines.append(
                f"{lat.target:<9} {lat.rate:>7.0f} {len(lat.samples):>6} {lat.percentile(0.5) * 1e3:>7.2f} "
                f"{lat.percentile(0.99) * 1e3:>7.2f} {max(lat.samples, default=float('nan')) * 1e3:>7.2f} {lat.late:>5}"
            )
    lines += dkim_verdicts(runs, settings)
    return "\n".join(lines)


def dkim_verdicts(runs: Sequence[Run], settings: Settings) -> list[str]:
    """PASS/MISS of the --dkim targets at the largest messages per session (end to end)."""
    per_session = max(settings.per_session)

    def e2e(target: str) -> float | None:
        chosen = [r for r in runs if r.target == target and r.per_session == per_session]
        return _median(chosen, lambda r: r.e2e_rate) if chosen else None

    signed, bare, postfix = e2e("relay+dkim"), e2e("relay"), e2e("postfix+dkim")
    lines = []
    if signed is not None and bare is not None:
        lines.append(_verdict(f"relay+dkim e2e / relay e2e at {per_session}/session", signed / bare, 0.8))
    if signed is not None and postfix is not None:
        lines.append(_verdict(f"relay+dkim e2e / postfix+dkim e2e at {per_session}/session", signed / postfix, 2.0))
    return ["", "targets:", *lines] if lines else []


def _verdict(what: str, value: float, target: float) -> str:
    return f"  {what}: {value:.2f}x (target >= {target:.1f}x) {'PASS' if value >= target else 'MISS'}"


def make_target(
    name: str, sink: SmtpSink, settings: Settings, dns_port: int, key: DkimKeyFile | None, redis: BenchRedis | None
) -> Target:
    if name == "postfix":
        return PostfixTarget(sink)
    if name == "postfix+dkim":
        assert key is not None
        return PostfixDkimTarget(sink, key)
    policy: Literal["off", "default"] = "default" if name == "relay+pol" or settings.policy == "default" else "off"
    executable = settings.baseline_executable if name.startswith("baseline") else settings.relay_executable
    assert executable is not None
    launcher = [executable]
    if name == "relay+dkim":
        assert key is not None
        launcher = key.relay_launcher()
    limits = None
    if redis is not None and name in ("relay", "relay+redis", "baseline+redis"):
        limits = limits_spec(redis.address if name.endswith("+redis") else None)
    return RelayTarget(sink, policy, settings.relay_args, launcher, dns_port, name=name, limits=limits)


def run(settings: Settings) -> str:
    if not postfix_available() or not os.access(SMTP_SOURCE, os.X_OK):
        raise BenchError("needs root and the postfix package (smtp-sink, smtp-source): run `make peers`")
    sink_dir = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    sink = SmtpSink(sink_dir, dump=False)
    targets: list[Target] = []
    resolver = LoopbackDns([RECIPIENT.split("@")[1], SENDER.split("@")[1]])
    resolver.start()
    key = DkimKeyFile(SENDER.split("@")[1]) if settings.dkim else None
    redis = BenchRedis() if settings.limits == "redis" else None
    load_before = os.getloadavg()
    try:
        sink.start()
        if redis is not None:
            redis.start()
        for name in settings.targets:
            target = make_target(name, sink, settings, resolver.port, key, redis)
            targets.append(target)
            target.start()
            load_run(target, sink, settings.sessions, 5, settings.size, settle=0.0)  # warm-up, not measured
            if isinstance(target, RelayTarget) and name == "relay+dkim" and relay_signed(target.http_port) < 5:
                raise BenchError(f"relay+dkim did not sign its warm-up messages:\n{target.log_tail()}")
        runs: list[Run] = []
        for round_no in range(settings.rounds):
            for per_session in settings.per_session:
                order = targets if round_no % 2 == 0 else targets[::-1]
                for target in order:
                    result = load_run(
                        target, sink, settings.sessions, per_session, settings.size, settings.settle,
                        min_messages=settings.min_messages,
                    )  # fmt: skip
                    runs.append(result)
                    print(
                        f"round {round_no + 1} {per_session:>4}/session {target.name:<9} "
                        f"accepted {result.accepted_rate:6.0f}/s  e2e {result.e2e_rate:6.0f}/s  "
                        f"cpu {result.cpu_seconds:5.2f}s",
                        file=sys.stderr,
                        flush=True,
                    )
        latencies: list[Latency] = []
        if settings.latency_seconds > 0:
            lowest = min(settings.per_session)
            for target in targets:
                peak = max(r.accepted_rate for r in runs if r.target == target.name and r.per_session == lowest)
                rate = peak / 2
                count = max(50, int(rate * settings.latency_seconds))
                base = sink.count()
                latency = asyncio.run(
                    latency_probe(
                        target.host, target.port, name=target.name, rate=rate, count=count,
                        connections=settings.sessions, size=settings.size,
                    )
                )  # fmt: skip
                wait_for_sink(sink, base + count, timeout=120)
                latencies.append(latency)
        for target in targets:
            if isinstance(target, RelayTarget) and target.name.endswith("+redis"):
                check_decided_in_redis(target.http_port)
        load = " / ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
        machine = f"load average 1/5/15 min, start -> end: {load} ({os.cpu_count()} CPUs, shared: figures are noisy)"
        return f"{report(runs, latencies, settings)}\n\n{machine}"
    finally:
        for target in targets:
            target.stop()
        sink.stop()
        resolver.stop()
        shutil.rmtree(sink_dir, ignore_errors=True)
        if key is not None:
            key.remove()
        if redis is not None:
            redis.stop()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    return print_report(lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())
