"""A lean Redis connection for the fleet's decisions: RESP2 on one asyncio transport, parsed by hiredis.

redis-py costs ~300 us of CPU per lone command (a pipeline object, a connection checked out and back, a task
per timed write and read, generic packing); at a few hundred messages a second that was most of what
fleet-wide limits cost. Here a command is packed in a few bytes operations, every command of one event-loop
pass leaves in one write (so concurrent decisions are pipelined without anyone collecting them), and replies
resolve the callers' futures in order as they arrive. No timeouts here: the caller bounds each decision and
`drop`s the connection when one expires, so a hung Redis never answers a later command with an earlier reply.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis

Arg = str | bytes | int


class ReplyError(Exception):
    """Redis answered with an error (e.g. WRONGPASS, NOSCRIPT); the message is Redis's text."""


class WireLost(ConnectionError):
    """The connection closed (or was dropped) before the reply came."""


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        self._reader = hiredis.Reader()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a command for this loop pass's write; its future gets the reply."""
        if self.closed or self.transport is None:
            raise WireLost("connection closed")
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(command)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        return reply

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))
            self.wire.writes += 1

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.lose(WireLost("unexpected reply from Redis"))
                return
            future = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lose(WireLost(f"connection lost: {exc}" if exc else "connection closed by Redis"))

    def lose(self, error: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RedisWire:
    """One lazily (re)connected connection: TCP or TLS, AUTH when credentials are given."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str = "",
        password: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._tls = tls
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._closed = False
        self.writes = 0
        """Writes to the socket so far: commands asked for in one loop pass share one (tests count them)."""

    async def call(self, *args: Arg) -> Any:
        """Send one command and wait for its reply; ReplyError for an error reply, OSError when not connected."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            if self._closed:
                raise WireLost("closed")
            protocol = await self._connected()
        return await protocol.send(pack(args))

    async def _connected(self) -> _Protocol:
        """The connection, opened (and authenticated) once however many callers are waiting for it."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        hostname = self.host if self._tls else None
        _, protocol = await loop.create_connection(
            lambda: _Protocol(self), self.host, self.port, ssl=self._tls, server_hostname=hostname
        )
        try:
            if self._password:
                credentials = (self._username, self._password) if self._username else (self._password,)
                await protocol.send(pack(("AUTH", *credentials)))
        except BaseException:
            protocol.lose(WireLost("closed after a failed AUTH"))
            raise
        self._protocol = protocol
        return protocol

    def drop(self) -> None:
        """Close the connection (a decision timed out): the commands still waiting fail, the next reconnects."""
        if self._protocol is not None:
            self._protocol.lose(WireLost("dropped: no answer in time"))
            self._protocol = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._connecting = None

    async def close(self) -> None:
        """Close for good: later calls fail at once instead of opening a connection again."""
        self._closed = True
        connecting = self._connecting
        self.drop()
        if connecting is not None:
            await asyncio.gather(connecting, return_exceptions=True)
