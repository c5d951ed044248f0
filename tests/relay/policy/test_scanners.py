"""The scanner clients against the real daemons (clamd, rspamd, spamd), and their failure modes.

Async only: the reply parsers are tested with plain data in test_scanner_replies.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from bench.peers.ports import free_port

from smtp_relay.policy.scanners import (
    ClamdClient,
    RspamdClient,
    ScannerError,
    SpamdClient,
    VirusResult,
)
from smtp_relay.policy.spam_builtin import GTUBE
from tests.peers.clamd import Clamd, eicar
from tests.peers.rspamd import Rspamd
from tests.peers.spamd import Spamd
from tests.relay.policy.samples import PDF, message, zip_of

CLEAN = message(("report.pdf", PDF))
SPAM = (
    b"From: ann@example.com\r\nTo: bob@example.net\r\nSubject: test\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <gtube.1@example.com>\r\n\r\nThis is the GTUBE test:\r\n" + GTUBE + b"\r\n"
)


def unused_port() -> int:
    """A port with nothing listening: connections are refused at once."""
    return free_port()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A real TCP server that accepts and never answers: a hung scanner."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    yield port
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


# --- clamd -------------------------------------------------------------------------------------


@pytest.mark.peers
async def test_clamd_finds_eicar_attachment(clamd: Clamd) -> None:
    result = await ClamdClient(clamd.host, clamd.port, timeout=10).scan(message(("eicar.com", eicar())))
    assert result.infected
    assert result.signature is not None
    assert result.signature.startswith("Relayfleet.Test.EICAR")
    assert result.signature.endswith(".UNOFFICIAL")


@pytest.mark.peers
async def test_clamd_finds_zipped_eicar(clamd: Clamd) -> None:
    result = await ClamdClient(clamd.host, clamd.port, timeout=10).scan(
        message(("docs.zip", zip_of({"readme.txt": b"hi", "eicar.com": eicar()})))
    )
    assert result.infected
    assert result.signature is not None and result.signature.endswith(".UNOFFICIAL")


@pytest.mark.peers
async def test_clamd_clean_message(clamd: Clamd) -> None:
    client = ClamdClient(clamd.host, clamd.port, timeout=10)
    await client.ping()
    assert await client.scan(CLEAN) == VirusResult(infected=False)


@pytest.mark.peers
async def test_clamd_large_message_in_chunks(clamd: Clamd) -> None:
    data = message(("big.bin", bytes(300 * 1024)), ("eicar.txt", eicar()))
    result = await ClamdClient(clamd.host, clamd.port, timeout=20).scan(data)
    assert result.infected


@pytest.mark.peers
async def test_clamd_size_limit_is_an_error(clamd_factory: Callable[..., Clamd]) -> None:
    small = clamd_factory(stream_max_length="1K")
    with pytest.raises(ScannerError, match="size limit"):
        await ClamdClient(small.host, small.port, timeout=10).scan(message(("big.bin", bytes(8192))))


async def test_clamd_down_fails_quickly() -> None:
    """The refused connection itself is the error: the client does not sit out its timeout first."""
    with pytest.raises(ScannerError) as failed:
        await ClamdClient("127.0.0.1", unused_port(), timeout=5).scan(CLEAN)
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)
    assert "did not answer" not in str(failed.value)


@pytest.mark.looptime
async def test_clamd_hung_times_out(silent_server: int) -> None:
    """A scanner that never answers costs exactly the client's timeout (virtual time), then an error."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ScannerError, match="did not answer"):
        await ClamdClient("127.0.0.1", silent_server, timeout=5).scan(CLEAN)
    assert loop.time() - started == pytest.approx(5)


# --- rspamd ------------------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.slow  # the first start on a machine compiles rspamd's regexes (cached afterwards)
async def test_rspamd_gtube_is_rejected(rspamd: Rspamd) -> None:
    async with RspamdClient(rspamd.host, rspamd.port, timeout=20) as client:
        await client.ping()
        report = await client.check(
            SPAM, client_ip="192.0.2.25", helo="mail.example.com", mail_from="ann@example.com",
            rcpts=["bob@example.net", "carl@example.net"], user="ann",
        )  # fmt: skip
    assert report.engine == "rspamd"
    assert report.action == "reject"
    assert "GTUBE" in report.symbols
    assert report.required is not None and report.score >= report.required


@pytest.mark.peers
@pytest.mark.slow
async def test_rspamd_clean_message_scores_low(rspamd: Rspamd) -> None:
    async with RspamdClient(rspamd.host, rspamd.port, timeout=20) as client:
        report = await client.check(
            CLEAN,
            client_ip="192.0.2.25",
            helo="mail.example.com",
            mail_from="ann@example.com",
            rcpts=["bob@example.net"],
        )
    assert report.action == "no action"
    assert report.score < 5.0
    assert "GTUBE" not in report.symbols


async def test_rspamd_down_fails_quickly() -> None:
    """The refused connection itself is the error: the client does not sit out its timeout first."""
    async with RspamdClient("127.0.0.1", unused_port(), timeout=5) as client:
        with pytest.raises(ScannerError) as failed:
            await client.check(CLEAN)
    cause = failed.value.__cause__
    assert isinstance(cause, aiohttp.ClientConnectorError)
    assert isinstance(cause.os_error, ConnectionRefusedError)


async def test_rspamd_hung_times_out(silent_server: int) -> None:
    async with RspamdClient("127.0.0.1", silent_server, timeout=0.3) as client:
        with pytest.raises(ScannerError):
            await client.check(CLEAN)


async def test_rspamd_refuses_header_injection() -> None:
    async with RspamdClient("127.0.0.1", unused_port(), timeout=1) as client:
        with pytest.raises(ScannerError, match="CR/LF"):
            await client.check(CLEAN, mail_from="a@example.com\r\nX-Evil: 1")


# --- spamd -------------------------------------------------------------------------------------


@pytest.mark.peers
async def test_spamd_gtube_scores_1000(spamd: Spamd) -> None:
    client = SpamdClient(spamd.host, spamd.port, timeout=20)
    await client.ping()
    report = await client.check(SPAM)
    assert report.engine == "spamassassin"
    assert report.score >= 1000.0
    assert "GTUBE" in report.symbols
    assert report.required == 5.0


@pytest.mark.peers
async def test_spamd_clean_message_scores_low(spamd: Spamd) -> None:
    report = await SpamdClient(spamd.host, spamd.port, timeout=20).check(CLEAN)
    assert report.score < 5.0
    assert "GTUBE" not in report.symbols


async def test_spamd_down_fails_quickly() -> None:
    with pytest.raises(ScannerError):
        await SpamdClient("127.0.0.1", unused_port(), timeout=5).check(CLEAN)


async def test_spamd_hung_times_out(silent_server: int) -> None:
    with pytest.raises(ScannerError, match="did not answer"):
        await SpamdClient("127.0.0.1", silent_server, timeout=0.3).check(CLEAN)
