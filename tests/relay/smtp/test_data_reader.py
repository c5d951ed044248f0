"""The chunked DATA decoder against a line-by-line reference, at every chunk boundary."""

from __future__ import annotations

import asyncio
import random

import pytest

from smtp_relay.smtp.data_reader import DataProblem, DotDecoder, read_data


def reference(stream: bytes) -> tuple[bytes, int]:
    """RFC 5321 4.5.2 the slow way: lines until ".", first dot of each line removed; returns (message, used)."""
    out = []
    pos = 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        if line == b".\r\n":
            return b"".join(out), pos
        out.append(line[1:] if line.startswith(b".") else line)


def feed_in_chunks(stream: bytes, sizes: list[int], limit: int | None = None) -> tuple[DotDecoder, int]:
    decoder = DotDecoder(limit)
    pos = 0
    for size in sizes:
        chunk = stream[pos : pos + size]
        used = decoder.feed(chunk)
        pos += used
        if decoder.done:
            return decoder, pos
        assert used == len(chunk)
    raise AssertionError("terminator not found")


MESSAGES = [
    b".\r\n",
    b"a\r\n.\r\n",
    b".\r\n.\r\n",  # not possible from a stuffing client, but a lone first-line dot is the end
    b"..\r\n.\r\n",
    b"...\r\n.\r\n",
    b"..x\r\n.y\r\n\r\n..\r\n.\r\n",
    b"Subject: t\r\n\r\n" + b"".join(b"..line %d\r\nplain %d\r\n" % (i, i) for i in range(300)) + b".\r\n",
    b"\r\n\r\n.\r\n",
]


@pytest.mark.parametrize("stream", MESSAGES)
def test_every_two_way_split_matches_reference(stream: bytes) -> None:
    trailer = b"QUIT\r\n"
    expected, used = reference(stream + trailer)
    for cut in range(0, len(stream) + len(trailer) + 1, max(1, len(stream) // 200)):
        decoder, consumed = feed_in_chunks(stream + trailer, [cut, 1 << 20] if cut else [1 << 20])
        result = decoder.result()
        assert result.problem is None
        assert result.content == expected, cut
        assert consumed == used


def test_byte_by_byte_and_random_chunks_match_reference() -> None:
    rng = random.Random(5321)
    for stream in MESSAGES:
        expected, used = reference(stream + b"NOOP\r\n")
        decoder, consumed = feed_in_chunks(stream + b"NOOP\r\n", [1] * (len(stream) + 6))
        assert (decoder.result().content, consumed) == (expected, used)
        for _ in range(20):
            sizes = [rng.randint(1, 9) for _ in range(len(stream) + 6)]
            decoder, consumed = feed_in_chunks(stream + b"NOOP\r\n", sizes)
            assert (decoder.result().content, consumed) == (expected, used)


@pytest.mark.parametrize("bad", [b"\n", b"\r", b"x\ry", b"x\ny", b"\n.\n", b"\r.\r", b"\r\r\n"])
def test_bare_cr_or_lf_anywhere_is_a_problem_at_any_split(bad: bytes) -> None:
    stream = b"Subject: x\r\n\r\nbefore" + bad + b"after\r\n.\r\n"
    for cut in range(1, len(stream)):
        decoder, consumed = feed_in_chunks(stream, [cut, 1 << 20])
        assert decoder.result().problem is DataProblem.BARE_CR_LF, cut
        assert decoder.result().content == b""
        assert consumed == len(stream)


def test_bare_lf_as_the_very_first_byte() -> None:
    decoder, _ = feed_in_chunks(b"\nbody\r\n.\r\n", [1 << 20])
    assert decoder.result().problem is DataProblem.BARE_CR_LF


def test_nul_is_a_problem() -> None:
    decoder, _ = feed_in_chunks(b"a\x00b\r\n.\r\n", [2, 100])
    assert decoder.result().problem is DataProblem.NUL


def test_size_limit_counts_unstuffed_bytes_and_reads_to_the_end() -> None:
    body = b"..\r\n" * 10  # 40 bytes on the wire, 30 unstuffed
    decoder, consumed = feed_in_chunks(body + b".\r\nRSET\r\n", [7] * 20, limit=30)
    assert decoder.result().problem is None and len(decoder.result().content) == 30
    decoder, consumed = feed_in_chunks(body + b".\r\nRSET\r\n", [7] * 20, limit=29)
    assert decoder.result().problem is DataProblem.TOO_BIG
    assert decoder.result().size == 30 and decoder.result().content == b""
    assert consumed == len(body) + 3


async def test_read_data_leaves_pipelined_commands_in_the_stream() -> None:
    reader = asyncio.StreamReader(limit=1 << 16)
    reader.feed_data(b"Subject: a\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@y>\r\n")
    result = await read_data(reader, None)
    assert result.content == b"Subject: a\r\n\r\nbody\r\n"
    assert await reader.readline() == b"MAIL FROM:<x@y>\r\n"


async def test_read_data_eof_is_a_connection_error() -> None:
    reader = asyncio.StreamReader(limit=1 << 16)
    reader.feed_data(b"partial message\r\n")
    reader.feed_eof()
    with pytest.raises(ConnectionResetError):
        await read_data(reader, None)
