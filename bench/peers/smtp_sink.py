"""Postfix's real `smtp-sink` as the final upstream of tests and the benchmark.

smtp-sink is a single event-driven process that answers SMTP as fast as the loopback allows, so it
never is the bottleneck, and its behaviour knobs make a real upstream fail in the ways a relay must
survive (4xx/5xx on any command, 421, silent disconnects, slow replies). Facts checked here
(Postfix 3.7):

* `-c` prints `sess=N quit=N mesg=N` followed by a bare CR to stdout after every session end, QUIT
  and ".", so counting reads a small file instead of listing a dump folder.
* `-d TEMPLATE` writes one file per transaction: `X-Client-Addr`, `X-Client-Proto`, `X-Helo-Args`,
  `X-Mail-Args`, one `X-Rcpt-Args` per RCPT, a three-line `Received:` header, then the message with
  LF line ends, already dot-unstuffed, then one empty line.
* A "." that is refused (`-r .`, `-f .`, `-Q .`, `-q .`) is still counted and still dumped. This module
  therefore keeps each start's counters and dumps apart and ignores those of starts that refuse ".".
* The dump folder must be writable by the `-u` user; smtp-sink runs with its working directory in
  the dump folder and a relative template, so no ancestor (pytest's 0700 temp root) needs opening up.
* smtp-sink sets SO_REUSEADDR: a restart on the same port works at once (upstream outage tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from bench.peers.ports import HOST, free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
_COUNTER = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")
_DOT_REFUSERS = ("soft_reject", "hard_reject", "disconnect", "reply_421")


def wait_for_banner(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bytes:
    """Block until the server on host:port sends its 220 greeting; return the greeting line."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {host}:{port} exited before its banner")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                banner = sock.recv(512)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(512)
                    return banner
                last = RuntimeError(f"unexpected greeting {banner!r}")
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"no SMTP banner on {host}:{port} within {timeout}s (last: {last})")


def wait_for_listener(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Block until host:port accepts a TCP connection (for servers whose greeting may be an error or late)."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"server for {host}:{port} exited before it listened")
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s ({exc})") from None
        time.sleep(0.01)


@dataclass(frozen=True)
class SinkBehaviour:
    """How the sink answers; commands are SMTP verbs or "." for end of data, e.g. ("RCPT", ".")."""

    soft_reject: Sequence[str] = ()
    """-r: answer these commands with a 4xx (the `soft_bounce_reply`)."""
    hard_reject: Sequence[str] = ()
    """-f: answer these commands with a 5xx (the `hard_bounce_reply`)."""
    disconnect: Sequence[str] = ()
    """-q: drop the connection without a reply after these commands."""
    reply_421: Sequence[str] = ()
    """-Q: answer these commands with 421 and disconnect."""
    soft_bounce_reply: str | None = None
    """-b: the 4xx text, e.g. "451 4.3.0 try later" (default "450 4.3.0 Error: command failed")."""
    hard_bounce_reply: str | None = None
    """-B: the 5xx text (default "500 5.3.0 Error: command failed")."""
    delays: Mapping[str, float] = field(default_factory=dict)
    """-W: wait this many seconds before answering a command, e.g. {".": 2.0} (a slow upstream)."""
    pipelining: bool = True
    """False adds -p (no PIPELINING in EHLO); -r and -f imply it anyway."""
    esmtp: bool = True
    """False adds -e (no ESMTP: only HELO works)."""
    hostname: str = "smtp-sink"
    """-h: the name in the greeting and EHLO reply (Postfix refuses to relay to its own myhostname)."""
    max_connections: int = 256
    """-m: simultaneous connections; more wait in the listen queue."""
    timeout: int = 100
    """-t: seconds per command read or reply write."""
    extra_args: Sequence[str] = ()
    """Any other smtp-sink options, placed before the address."""

    @property
    def accepts_data(self) -> bool:
        """Whether a message that reaches "." is accepted, i.e. belongs in count() and messages()."""
        return not any("." in getattr(self, name) for name in _DOT_REFUSERS)

    def args(self) -> list[str]:
        """The smtp-sink options for this behaviour."""
        out: list[str] = []
        for flag, commands in (
            ("-r", self.soft_reject),
            ("-f", self.hard_reject),
            ("-q", self.disconnect),
            ("-Q", self.reply_421),
        ):
            if commands:
                out += [flag, ",".join(commands)]
        if self.soft_bounce_reply is not None:
            out += ["-b", self.soft_bounce_reply]
        if self.hard_bounce_reply is not None:
            out += ["-B", self.hard_bounce_reply]
        for command, delay in self.delays.items():
            out += ["-W", f"{command}:{delay:g}"]
        if not self.pipelining:
            out.append("-p")
        if not self.esmtp:
            out.append("-e")
        out += ["-h", self.hostname, "-m", str(self.max_connections), "-t", str(self.timeout)]
        return [*out, *self.extra_args]


@dataclass(frozen=True)
class SinkMessage:
    """One transaction as smtp-sink dumped it."""

    sender: str
    """Envelope sender without angle brackets; "" for the null sender."""
    recipients: tuple[str, ...]
    """Envelope recipients in RCPT order, without angle brackets."""
    data: bytes
    """The message as sent (dot-unstuffed), with CRLF line ends; the last line ends with CRLF."""
    helo: str | None
    """The HELO/EHLO argument of the session."""
    client: str
    """The client's IP address as the sink saw it."""
    mail_params: tuple[str, ...] = ()
    """ESMTP parameters of MAIL FROM, e.g. ("SIZE=123", "BODY=8BITMIME")."""

    def email(self) -> EmailMessage:
        """The data parsed with the standard library's modern policy."""
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


def parse_dump(raw: bytes) -> SinkMessage:
    """Parse one `smtp-sink -d` file (format above); raise ValueError on anything else."""
    lines = raw.split(b"\n")
    if len(lines) < 2 or lines[-1] != b"" or lines[-2] != b"":
        raise ValueError("incomplete dump: no trailing empty line")
    lines = lines[:-2]  # the trailing blank line smtp-sink adds, and the split's empty tail
    fields: dict[str, list[str]] = {}
    index = 0
    while index < len(lines) and not lines[index].startswith(b"Received: "):
        name, sep, value = lines[index].decode("utf-8", "surrogateescape").partition(": ")
        if not sep or not name.startswith("X-"):
            raise ValueError(f"unexpected sink header {lines[index]!r}")
        fields.setdefault(name, []).append(value)
        index += 1
    index += 3  # Received: + its two continuation lines
    if index > len(lines) or "X-Mail-Args" not in fields:
        raise ValueError("dump lacks the envelope headers")
    mail = fields["X-Mail-Args"][0].split()
    return SinkMessage(
        sender=mail[0].strip("<>") if mail else "",
        recipients=tuple(rcpt.split()[0].strip("<>") for rcpt in fields.get("X-Rcpt-Args", [])),
        data=b"".join(line + b"\r\n" for line in lines[index:]),
        helo=fields.get("X-Helo-Args", [None])[0],
        client=fields.get("X-Client-Addr", [""])[0],
        mail_params=tuple(mail[1:]),
    )


@dataclass
class _Generation:
    """One run of the smtp-sink process: its own counter file and dump folder."""

    counters: Path
    dump: Path | None
    behaviour: SinkBehaviour


class SmtpSink:
    """A real smtp-sink on 127.0.0.1; stop() and start() keep the port, so tests can simulate an outage."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        dump: bool = True,
        behaviour: SinkBehaviour | None = None,
        backlog: int = 1024,
    ) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = port or free_port()
        self.dump = dump
        self.behaviour = behaviour or SinkBehaviour()
        self.backlog = backlog
        self._proc: subprocess.Popen[bytes] | None = None
        self._generations: list[_Generation] = []

    @property
    def address(self) -> str:
        """host:port, as smtp-source and manifests want it."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running smtp-sink's process id."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, behaviour: SinkBehaviour | None = None, timeout: float = 10.0) -> SmtpSink:
        """Start (again) on the same port, optionally with a new behaviour; wait until it listens."""
        if self.running:
            raise RuntimeError("smtp-sink is already running; stop() it first")
        if behaviour is not None:
            self.behaviour = behaviour
        gen_no = len(self._generations)
        counters = self.workdir / f"counters-{gen_no}.txt"
        cmd = [SMTP_SINK, "-c"]
        as_root = os.geteuid() == 0
        if as_root:
            cmd += ["-u", "nobody"]
        dump: Path | None = None
        if self.dump:
            dump = self.workdir / f"dump-{gen_no}"
            dump.mkdir(mode=0o700)
            if as_root:
                nobody = pwd.getpwnam("nobody")
                os.chown(dump, nobody.pw_uid, nobody.pw_gid)
            cmd += ["-d", "%M."]  # relative to cwd: only the dump folder itself needs to be writable
        cmd += [*self.behaviour.args(), f"{self.host}:{self.port}", str(self.backlog)]
        self._generations.append(_Generation(counters, dump, self.behaviour))
        with open(counters, "wb") as out, open(self.workdir / "stderr.txt", "ab") as err:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=dump or self.workdir)
        proc = self._proc
        try:
            # Not the banner: a sink told to refuse, drop or delay CONNECT has no 220 to offer.
            wait_for_listener(self.host, self.port, timeout, alive=lambda: proc.poll() is None)
        except BaseException:
            self.stop()
            raise RuntimeError(f"smtp-sink did not start: {self.stderr()}") from None
        return self

    def stop(self) -> None:
        """Stop the process (an upstream outage); counts and dumps so far stay readable."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, behaviour: SinkBehaviour | None = None) -> SmtpSink:
        """Stop and start on the same port, e.g. to switch from failing to accepting."""
        self.stop()
        return self.start(behaviour)

    def stderr(self) -> str:
        path = self.workdir / "stderr.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def _counter(self, gen: _Generation, index: int) -> int:
        try:
            with open(gen.counters, "rb") as counters:  # only the tail: the benchmark polls this every few ms
                counters.seek(max(0, os.fstat(counters.fileno()).st_size - 200))
                raw = counters.read()
        except FileNotFoundError:
            return 0
        matches = _COUNTER.findall(raw)
        return int(matches[-1][index]) if matches else 0

    def count(self) -> int:
        """Messages accepted so far (all starts; starts whose behaviour refuses "." add nothing)."""
        return sum(self._counter(gen, 2) for gen in self._generations if gen.behaviour.accepts_data)

    def attempts(self) -> int:
        """Messages that reached "." (accepted or not), over all starts."""
        return sum(self._counter(gen, 2) for gen in self._generations)

    def sessions(self) -> int:
        """Connections so far (including the readiness probe of each start)."""
        return sum(self._counter(gen, 0) for gen in self._generations)

    def _dump_files(self) -> Iterator[Path]:
        for gen in self._generations:
            if gen.dump is not None and gen.behaviour.accepts_data:
                yield from gen.dump.iterdir()

    def messages(self) -> list[SinkMessage]:
        """Every accepted message in about arrival order; a dump still being written is left out.

        The order comes from file times (a few ms coarse) with the inode as tie-break: messages that
        arrive within the same few ms may swap, so tests should match them by content, not position.
        """
        if not self.dump:
            raise RuntimeError("this sink was started with dump=False: it only counts")
        found: list[tuple[int, int, SinkMessage]] = []
        for path in self._dump_files():
            try:
                stat = path.stat()
                found.append((stat.st_mtime_ns, stat.st_ino, parse_dump(path.read_bytes())))
            except (FileNotFoundError, ValueError):
                continue
        return [message for *_, message in sorted(found, key=lambda item: item[:2])]

    def wait_for(self, n: int, timeout: float = 10.0) -> int:
        """Block until count() >= n; return the count. Blocks the thread: use await async_wait_for in async tests."""
        deadline = time.monotonic() + timeout
        while (seen := self.count()) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"smtp-sink got {seen} of {n} messages within {timeout}s")
            time.sleep(0.01)
        return seen

    async def async_wait_for(self, n: int, seconds: float = 10.0) -> int:
        """wait_for() that lets the test's event loop (and an in-process relay) run meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                while True:  # smtp-sink only reports through its counter file: poll it
                    if (seen := self.count()) >= n:
                        return seen
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise TimeoutError(f"smtp-sink got {self.count()} of {n} messages within {seconds}s") from None
