"""SMTP client transactions with RFC 2920 pipelining, on a connection that aiosmtplib set up.

aiosmtplib opens each upstream connection (TCP, implicit TLS or STARTTLS, EHLO, AUTH) and stays in
charge of closing it. It cannot pipeline: it writes one command, waits for its reply, and drops
bytes that arrive while a parsed reply waits to be picked up. So once a connection is set up its
transport is handed to a `ReplyReader`, which queues every reply it parses, and `transact` writes
MAIL, every RCPT and DATA in one write and the message with its final dot in a second one: two
writes and two round trips per message instead of three plus one per recipient. A server that also
offers CHUNKING gets MAIL, the RCPTs and `BDAT <size> LAST` with the message in a single write.
Servers that do not offer PIPELINING get the commands one at a time, stopping where RFC 5321 says to.

The message is what the spool holds: CRLF line ends (the listener refuses bare CR and LF) and
dot-unstuffed. `stuff` adds the dots and the terminator for DATA; anything that is not clean CRLF
(a DSN built elsewhere, a released quarantine entry) is normalized first (`crlf`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

MAX_REPLY_BYTES = 64 * 1024
"""A reply (all lines of a multi-line one) longer than this is a broken or hostile server."""
DATA_DONE_TIMEOUT = 600.0
"""Seconds to wait for the reply to the final dot: RFC 5321 4.5.3.2.6 asks for 10 minutes, because the
server may scan the message before answering; giving up early risks a duplicate delivery."""

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_UNSAFE_IN_COMMAND = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters never belong in a path (CR and LF would inject commands); a quoted local part
keeps its quotes, so spaces inside it are fine."""


class UnsafeAddress(ValueError):
    """An address that cannot be written into a MAIL or RCPT command as it is."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; the lines of a multi-line reply joined by newlines."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        """2xx: the command did what was asked."""
        return 200 <= self.code < 300


class ConnectionBroken(Exception):
    """The connection closed, timed out or spoke garbage before every expected reply came.

    `replies` holds the replies that did arrive, in order, so a caller knows how far the server got.
    """

    def __init__(self, reason: str, replies: Sequence[Reply] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.replies = list(replies)


class ReplyReader(asyncio.Protocol):
    """Reads SMTP replies off a transport into a queue, so several can be outstanding at once."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[str] = []
        """Text of the continuation lines of the reply being read."""
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._owed = 0
        """Replies due for the commands sent: one more is not an answer to anything we said."""
        self._broken: str | None = None
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None

    @classmethod
    def take_over(cls, transport: asyncio.BaseTransport | None) -> ReplyReader:
        """Become the protocol of a connection whose previous owner has no reply outstanding."""
        # uvloop's transports are not asyncio.Transport subclasses, so this cannot be an isinstance check.
        if transport is None or transport.is_closing():
            raise ConnectionBroken("the connection is closed")
        stream = cast(asyncio.Transport, transport)
        reader = cls(stream)
        stream.set_protocol(reader)
        return reader

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._broken is not None:
            return
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            code = line[:3]
            if len(line) < 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._break(f"malformed reply line {line[:80]!r}")
                return
            self._lines.append(line[4:].strip().decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                if len(self._replies) >= self._owed:  # e.g. a 421 on an idle connection
                    self._break(f"unexpected reply {line[:80]!r}")
                    return
                self._replies.append(Reply(int(code), "\n".join(self._lines)))
                self._lines = []
        del buffer[:start]
        if len(buffer) + sum(map(len, self._lines)) > MAX_REPLY_BYTES:
            self._break("reply too long")
            return
        if self._waiter is not None and len(self._replies) >= self._wanted and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._break("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(f"connection lost: {exc}" if exc else "connection lost")
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    # --- the client side ------------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, data: bytes, replies: int) -> None:
        """Write bytes to the server (the transport writes what it can at once) that earn `replies`."""
        if self._broken is not None or self.transport.is_closing():
            raise ConnectionBroken(self._broken or "the connection is closed")
        self._owed += replies
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark (a big message)."""
        while self._paused and self._broken is None:
            self._resumed = self._loop.create_future()
            await self._resumed

    async def replies(self, count: int, timeout: float) -> list[Reply]:  # noqa: ASYNC109 (per-reply budget)
        """The next `count` replies; ConnectionBroken (with those that came) on close, garbage or timeout."""
        if len(self._replies) < count and self._broken is None:
            waiter = self._waiter = self._loop.create_future()
            self._wanted = count
            timer = self._loop.call_later(timeout, self._time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if len(self._replies) < count:
            got = list(self._replies)
            self._replies.clear()
            raise ConnectionBroken(self._broken or "no reply", got)
        self._owed -= count
        return [self._replies.popleft() for _ in range(count)]

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self._waiter and not waiter.done():
            self._break("timed out waiting for the server's reply")

    async def command(self, line: bytes, timeout: float) -> Reply:  # noqa: ASYNC109
        """One command (CRLF included) and its reply."""
        self.send(line, 1)
        (reply,) = await self.replies(1, timeout)
        return reply


def crlf(data: bytes) -> bytes:
    """The message with CRLF line ends throughout, the last line included (as BDAT sends it)."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = _LINE_ENDS.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def stuff(data: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, then the final `.` line."""
    data = crlf(data).replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


def path_command(verb: bytes, address: str, options: Sequence[str], encoding: str) -> bytes:
    """`MAIL FROM:<a> OPT...` or `RCPT TO:<a>`; UnsafeAddress when the address cannot be sent as it is."""
    if _UNSAFE_IN_COMMAND.search(address):
        raise UnsafeAddress(f"address {address!r} contains a control character")
    try:
        path = address.encode(encoding)
    except UnicodeEncodeError as exc:
        raise UnsafeAddress(f"address {address!r} needs SMTPUTF8") from exc
    tail = (" " + " ".join(options)).encode("ascii") if options else b""
    return verb + b":<" + path + b">" + tail + b"\r\n"


@dataclass
class Transaction:
    """The server's replies to one message: MAIL, each RCPT sent, DATA and the final dot (when sent)."""

    mail: Reply
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None
    """The reply to DATA: 354, or the refusal (None with BDAT)."""
    done: Reply | None = None
    """The reply to the final dot or to BDAT LAST, when the message was sent."""

    @property
    def delivered(self) -> bool:
        return self.done is not None and self.done.positive


async def transact(
    reader: ReplyReader,
    mail: bytes,
    rcpts: Sequence[bytes],
    data: bytes,
    *,
    pipelining: bool,
    chunking: bool = False,
    timeout: float,  # noqa: ASYNC109 (per-reply budget, as RFC 5321 4.5.3.2 sets one per command)
    data_timeout: float = DATA_DONE_TIMEOUT,
) -> Transaction:
    """Run one mail transaction of `data`, the message as the spool holds it.

    With PIPELINING and CHUNKING (RFC 3030) everything goes in one write: MAIL, every RCPT, then
    `BDAT <size> LAST` and the message as it is (no dot-stuffing; a server that refuses the BDAT still
    reads and drops its octets); the BDAT reply is the transaction's `done`. Otherwise DATA: the
    message is sent only when MAIL and at least one RCPT were accepted and DATA got 354; a 354 after
    every RCPT was refused (a server breaking RFC 2920 3.1) gets an empty message, which it must
    refuse. ConnectionBroken carries the replies that came, MAIL's first.
    """
    got: list[Reply] = []
    try:
        if pipelining and chunking:
            body = crlf(data)
            reader.send(mail + b"".join(rcpts) + b"BDAT %d LAST\r\n" % len(body) + body, len(rcpts) + 2)
            await reader.drain()
            got = await reader.replies(len(rcpts) + 1, timeout)
            result = Transaction(got[0], got[1:])
            (result.done,) = await reader.replies(1, data_timeout)
            return result
        if pipelining:
            reader.send(mail + b"".join(rcpts) + b"DATA\r\n", len(rcpts) + 2)
            got = await reader.replies(len(rcpts) + 2, timeout)
            result = Transaction(got[0], got[1:-1], got[-1])
        else:
            result = Transaction(await reader.command(mail, timeout))
            got.append(result.mail)
            if not result.mail.positive:
                return result
            for rcpt in rcpts:
                result.rcpts.append(await reader.command(rcpt, timeout))
                got.append(result.rcpts[-1])
            if not any(r.positive for r in result.rcpts):
                return result
            result.data = await reader.command(b"DATA\r\n", timeout)
            got.append(result.data)
        if result.data is None or result.data.code != 354:
            return result
        wanted = result.mail.positive and any(r.positive for r in result.rcpts)
        reader.send(stuff(data) if wanted else b".\r\n", 1)
        await reader.drain()
        (result.done,) = await reader.replies(1, data_timeout)
        return result
    except ConnectionBroken as exc:
        raise ConnectionBroken(exc.reason, [*got, *exc.replies]) from None
