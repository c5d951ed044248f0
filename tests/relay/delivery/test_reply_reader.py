"""The reply reader on a fake transport: parsing, pairing replies with commands, and breaking cleanly.

A fake transport, because the point is to feed replies split at every byte, garbage, an EOF or
nothing at all, exactly when the test wants; the real upstreams are in test_pipelining.py.
"""

from __future__ import annotations

import asyncio

import pytest

from smtp_relay.delivery.pipelining import ConnectionBroken, Reply, ReplyReader


class _FakeTransport(asyncio.Transport):
    """A transport that records writes: the reader is fed replies by hand, split where the test likes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


async def test_reader_parses_replies_split_anywhere_and_multiline() -> None:
    transport = _FakeTransport()
    reader = ReplyReader.take_over(transport)
    reader.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
    assert transport.written == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
    wire = b"250-first\r\n250 second\r\n354 go ahead\r\n550 5.1.1 no\r\n"
    pending = asyncio.ensure_future(reader.replies(3, timeout=5))
    for index in range(len(wire)):  # one byte at a time: every split point
        reader.data_received(wire[index : index + 1])
    assert await pending == [Reply(250, "first\nsecond"), Reply(354, "go ahead"), Reply(550, "5.1.1 no")]


async def test_reader_garbage_and_eof_break_with_what_came() -> None:
    reader = ReplyReader.take_over(_FakeTransport())
    reader.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", 2)
    reader.data_received(b"250 ok\r\nHTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ConnectionBroken, match="malformed") as broken:
        await reader.replies(2, timeout=5)
    assert broken.value.replies == [Reply(250, "ok")]

    reader = ReplyReader.take_over(_FakeTransport())
    reader.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
    reader.data_received(b"250 ok\r\n")
    reader.eof_received()
    with pytest.raises(ConnectionBroken, match="closed by the server") as broken:
        await reader.replies(3, timeout=5)
    assert broken.value.replies == [Reply(250, "ok")]
    with pytest.raises(ConnectionBroken):
        reader.send(b"RSET\r\n", 1)


@pytest.mark.looptime
async def test_reader_times_out_after_its_budget() -> None:
    """In virtual time: no reply breaks the reader once its whole per-reply budget is spent, not before."""
    loop = asyncio.get_running_loop()
    reader = ReplyReader.take_over(_FakeTransport())
    reader.send(b"RSET\r\n", 1)
    started = loop.time()
    with pytest.raises(ConnectionBroken, match="timed out"):
        await reader.replies(1, timeout=30)
    assert loop.time() - started == pytest.approx(30)


async def test_a_reply_nobody_asked_for_breaks_the_reader() -> None:
    """Replies must pair with commands: a 421 on an idle pooled connection (or a server that answers
    twice) would otherwise be taken as the answer to the next transaction's MAIL."""
    reader = ReplyReader.take_over(_FakeTransport())
    reader.data_received(b"421 4.4.2 idle for too long\r\n")
    with pytest.raises(ConnectionBroken, match="unexpected reply"):
        await reader.command(b"MAIL FROM:<a@b>\r\n", timeout=5)

    reader = ReplyReader.take_over(_FakeTransport())
    reader.send(b"RSET\r\n", 1)
    reader.data_received(b"250 ok\r\n250 and again\r\n")
    assert await reader.replies(1, timeout=5) == [Reply(250, "ok")]  # this one was asked for
    with pytest.raises(ConnectionBroken, match="unexpected reply"):
        await reader.command(b"MAIL FROM:<a@b>\r\n", timeout=5)


async def test_reader_refuses_an_endless_reply() -> None:
    reader = ReplyReader.take_over(_FakeTransport())
    reader.send(b"EHLO x\r\n", 1)
    for _ in range(100):
        reader.data_received(b"250-" + b"x" * 1000 + b"\r\n")
    with pytest.raises(ConnectionBroken, match="too long"):
        await reader.replies(1, timeout=5)
