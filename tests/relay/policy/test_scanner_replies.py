"""The scanners' reply parsers with plain data: every reply that is not a verdict is a ScannerError."""

from __future__ import annotations

import pytest

from smtp_relay.policy.scanners import (
    ScannerError,
    VirusResult,
    parse_clamd_reply,
    parse_rspamd_reply,
    parse_spamd_reply,
    split_address,
)


def test_parse_clamd_replies() -> None:
    assert parse_clamd_reply("stream: OK") == VirusResult(False)
    assert parse_clamd_reply("stream: Win.Test.EICAR_HDB-1 FOUND") == VirusResult(True, "Win.Test.EICAR_HDB-1")
    for bad in ("INSTREAM size limit exceeded. ERROR", "", "stream: lstat() failed. ERROR", "UNKNOWN COMMAND"):
        with pytest.raises(ScannerError):
            parse_clamd_reply(bad)


def test_parse_spamd_replies() -> None:
    report = parse_spamd_reply("SPAMD/1.1 0 EX_OK", {"spam": "True ; 1000.0 / 5.0"}, b"GTUBE,NO_RECEIVED\r\n")
    assert (report.score, report.required, report.symbols) == (1000.0, 5.0, ("GTUBE", "NO_RECEIVED"))
    assert parse_spamd_reply("SPAMD/1.1 0 EX_OK", {"spam": "False ; -0.5 / 5.0"}, b"").score == -0.5
    with pytest.raises(ScannerError, match="76 Bad header"):
        parse_spamd_reply("SPAMD/1.0 76 Bad header line", {}, b"")
    with pytest.raises(ScannerError):
        parse_spamd_reply("HTTP/1.1 200 OK", {}, b"")


def test_parse_rspamd_replies() -> None:
    body = b'{"score": 3.5, "required_score": 15.0, "action": "no action", "symbols": {"B": {}, "A": {}}}'
    report = parse_rspamd_reply(body)
    assert (report.score, report.required, report.action, report.symbols) == (3.5, 15.0, "no action", ("A", "B"))
    for bad in (b"not json", b"{}", b'{"score": "x"}', b"[]", b'{"score": 1, "error": "boom"}'):
        with pytest.raises(ScannerError):
            parse_rspamd_reply(bad)


def test_split_address() -> None:
    assert split_address("127.0.0.1:3310") == ("127.0.0.1", 3310)
    assert split_address("[::1]:783") == ("::1", 783)
    with pytest.raises(ValueError, match="host:port"):
        split_address("clamd")
