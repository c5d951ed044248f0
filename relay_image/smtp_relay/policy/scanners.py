"""Small async clients for the content scanners: clamd (INSTREAM), rspamd (HTTP /checkv2), spamd (SPAMC).

`Scanners` holds the clients one config asks for. Each call has one overall timeout and every
failure (refused connection, timeout, a reply that is not understood, clamd's own errors) becomes
`ScannerError`, so the chain has exactly one thing to map to `onScannerError` (defer or accept) and
never mistakes a broken scanner for a clean message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiohttp
from multidict import CIMultiDict

from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.policy.verdict import SpamReport

CHUNK: Final = 64 * 1024
"""INSTREAM chunk size; clamd's StreamMaxLength bounds the sum, not the chunks."""
MAX_REPLY: Final = 64 * 1024
SCAN_TIMEOUT: Final = 30.0
"""Upper bound for one clamd/rspamd/spamd call at end of DATA."""


class ScannerError(Exception):
    """The scanner could not give a verdict (down, slow, refused the input, or answered nonsense)."""


@dataclass(frozen=True)
class VirusResult:
    """clamd's verdict; `signature` is the name clamd reports, e.g. ``Eicar-Test.UNOFFICIAL``."""

    infected: bool
    signature: str | None = None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) of SpamSpec/VirusSpec.address as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, limit=MAX_REPLY)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class ClamdClient:
    """clamd over TCP, one connection per scan (clamd's own IDSESSION pooling is not worth its state)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    async def ping(self) -> None:
        """Raise ScannerError unless clamd answers PONG."""
        reply = await self._command(b"zPING\0", b"")
        if reply != "PONG":
            raise ScannerError(f"clamd answered {reply!r} to PING")

    async def scan(self, data: bytes) -> VirusResult:
        """Stream the message with zINSTREAM; clamd decodes MIME and archives itself."""
        body = bytearray()
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            body += len(chunk).to_bytes(4, "big") + chunk
        body += b"\0\0\0\0"
        reply = await self._command(b"zINSTREAM\0", bytes(body))
        return parse_clamd_reply(reply)

    async def _command(self, command: bytes, payload: bytes) -> str:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await _open(self.host, self.port)
                writer.write(command)
                writer.write(payload)
                with contextlib.suppress(OSError):  # clamd may have answered (size limit) and closed
                    await writer.drain()
                raw = await reader.readuntil(b"\0")
        except TimeoutError:
            raise ScannerError(f"clamd {self.host}:{self.port} did not answer within {self.timeout}s") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                return exc.partial.decode("utf-8", "replace").strip()
            raise ScannerError(f"clamd {self.host}:{self.port} closed the connection without a reply") from None
        except (OSError, asyncio.LimitOverrunError) as exc:
            raise ScannerError(f"clamd {self.host}:{self.port}: {exc}") from exc
        finally:
            if writer is not None:
                await _close(writer)
        return raw[:-1].decode("utf-8", "replace").strip()


_CLAMD_FOUND = re.compile(r"^(?:stream|fd\[\d+\]|\S+): (?P<sig>.+) FOUND$")


def parse_clamd_reply(reply: str) -> VirusResult:
    """`stream: OK` / `stream: <signature> FOUND`; anything else (ERROR, size limit, ...) is an error."""
    if reply.endswith(" OK") and reply.startswith("stream:"):
        return VirusResult(infected=False)
    match = _CLAMD_FOUND.match(reply)
    if match:
        return VirusResult(infected=True, signature=match["sig"].strip())
    raise ScannerError(f"clamd: {reply or 'empty reply'}")


class RspamdClient:
    """rspamd's normal worker over HTTP; one aiohttp session, opened on first use, closed by `close()`."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RspamdClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def ping(self) -> None:
        """Raise ScannerError unless GET /ping answers pong."""
        try:
            async with self._client().get(f"http://{self._hostport}/ping") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ScannerError(f"rspamd {self._hostport}: {exc or type(exc).__name__}") from exc
        if response.status != 200 or "pong" not in text:
            raise ScannerError(f"rspamd {self._hostport} answered {response.status} to /ping")

    @property
    def _hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def check(
        self,
        data: bytes,
        *,
        client_ip: str | None = None,
        helo: str | None = None,
        mail_from: str | None = None,
        rcpts: Sequence[str] = (),
        user: str | None = None,
    ) -> SpamReport:
        """POST /checkv2 with the envelope as headers, so rspamd's SPF and envelope rules see it."""
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in (("IP", client_ip), ("Helo", helo), ("From", mail_from), ("User", user)):
            if value:
                headers.add(name, _header_value(value))
        for rcpt in rcpts:
            headers.add("Rcpt", _header_value(rcpt))
        url = f"http://{self._hostport}/checkv2"
        try:
            async with self._client().post(url, data=data, headers=headers) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ScannerError(f"rspamd {self._hostport}: {exc or type(exc).__name__}") from exc
        if response.status != 200:
            raise ScannerError(f"rspamd {self._hostport} answered HTTP {response.status}")
        return parse_rspamd_reply(body)


def _header_value(value: str) -> str:
    if re.search(r"[\r\n\x00]", value):
        raise ScannerError(f"refusing to send a header value with CR/LF/NUL: {value!r}")
    return value


def parse_rspamd_reply(body: bytes) -> SpamReport:
    """The /checkv2 JSON: score, required_score, action and the symbol names."""
    try:
        reply = json.loads(body)
        score = float(reply["score"])
        required = float(reply["required_score"]) if "required_score" in reply else None
        action = str(reply["action"]) if "action" in reply else None
        symbols = tuple(sorted(str(name) for name in reply.get("symbols", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScannerError(f"rspamd: unexpected reply {body[:200]!r}") from exc
    if reply.get("error"):
        raise ScannerError(f"rspamd: {reply['error']}")
    return SpamReport(score=score, symbols=symbols, engine="rspamd", required=required, action=action)


class SpamdClient:
    """SpamAssassin's spamd with the SPAMC/1.5 protocol; one connection per check."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    async def ping(self) -> None:
        """Raise ScannerError unless spamd answers PONG."""
        status, _, _ = await self._request(b"PING SPAMC/1.5\r\n\r\n")
        if not status.endswith("PONG"):
            raise ScannerError(f"spamd answered {status!r} to PING")

    async def check(self, data: bytes, *, user: str | None = None) -> SpamReport:
        """SYMBOLS: the score, spamd's threshold and the names of the rules that hit."""
        head = f"SYMBOLS SPAMC/1.5\r\nContent-length: {len(data)}\r\n"
        if user:
            head += f"User: {_header_value(user)}\r\n"
        status, headers, body = await self._request(head.encode() + b"\r\n" + data)
        return parse_spamd_reply(status, headers, body)

    async def _request(self, request: bytes) -> tuple[str, dict[str, str], bytes]:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await _open(self.host, self.port)
                writer.write(request)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                raw = await reader.read(MAX_REPLY)
                while chunk := await reader.read(MAX_REPLY):
                    raw += chunk
                    if len(raw) > MAX_REPLY:
                        raise ScannerError("spamd reply too long")
        except TimeoutError:
            raise ScannerError(f"spamd {self.host}:{self.port} did not answer within {self.timeout}s") from None
        except OSError as exc:
            raise ScannerError(f"spamd {self.host}:{self.port}: {exc}") from exc
        finally:
            if writer is not None:
                await _close(writer)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return lines[0], headers, body


_SPAMD_STATUS = re.compile(r"^SPAMD/\d+\.\d+ (?P<code>\d+) (?P<text>.*)$")
_SPAM_LINE = re.compile(r"^(?P<flag>True|False|Yes|No) ; (?P<score>-?[\d.]+) / (?P<required>-?[\d.]+)$", re.I)


def parse_spamd_reply(status: str, headers: dict[str, str], body: bytes) -> SpamReport:
    """`SPAMD/1.1 0 EX_OK`, `Spam: True ; 1000.0 / 5.0`, then the comma-separated symbols."""
    match = _SPAMD_STATUS.match(status.strip())
    if match is None:
        raise ScannerError(f"spamd: unexpected reply {status!r}")
    if match["code"] != "0":
        raise ScannerError(f"spamd: {match['code']} {match['text']}")
    spam = _SPAM_LINE.match(headers.get("spam", ""))
    if spam is None:
        raise ScannerError(f"spamd: no Spam header in reply ({headers})")
    symbols = tuple(s.strip() for s in body.decode("utf-8", "replace").split(",") if s.strip())
    return SpamReport(
        score=float(spam["score"]), symbols=symbols, engine="spamassassin", required=float(spam["required"])
    )


@dataclass
class Scanners:
    """The external scanner clients of one config (None: engine off or builtin); replaced on reload."""

    clamd: ClamdClient | None = None
    rspamd: RspamdClient | None = None
    spamd: SpamdClient | None = None

    @classmethod
    def from_spec(cls, spec: SmtpRelaySpec, timeout: float = SCAN_TIMEOUT) -> Scanners:
        policy = spec.policy
        scanners = cls()
        if policy.virus.engine == "clamd":
            scanners.clamd = ClamdClient(*split_address(policy.virus.address), timeout=timeout)
        if policy.spam.engine == "rspamd":
            scanners.rspamd = RspamdClient(*split_address(policy.spam.address), timeout=timeout)
        elif policy.spam.engine == "spamassassin":
            scanners.spamd = SpamdClient(*split_address(policy.spam.address), timeout=timeout)
        return scanners

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.close()
