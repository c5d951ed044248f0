"""Capture delivery: keep mail in a local Maildir instead of sending it (test and staging fleets).

Maildir is the format every mail tool reads (mutt -f, Dovecot, a test's glob), and its tmp/ -> new/
rename makes each message appear atomically. Mail tagged as spam goes to the Maildir++ `.Junk`
folder, as a recipient's mail store would file it, so policy tests can see the verdict.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from pathlib import Path

from smtp_relay.model.envelope import Envelope
from smtp_relay.util.fsutil import write_durably

JUNK_FOLDER = ".Junk"
_SPAM_FLAG = re.compile(rb"^x-spam-flag:[ \t]*yes\b", re.IGNORECASE | re.MULTILINE)
_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def _header_block(data: bytes) -> bytes:
    """The header section (up to the first empty line), where the spam flag counts."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end >= 0:
            return data[: end + len(separator)]
    return data


def is_spam(data: bytes) -> bool:
    """True when a header says `X-Spam-Flag: YES` (what the relay's spam check adds when it tags)."""
    return _SPAM_FLAG.search(_header_block(data)) is not None


def _clean(address: str) -> str:
    """An address safe for a header line: no CR/LF that could inject headers."""
    return address.replace("\r", "").replace("\n", "")


def envelope_headers(envelope: Envelope, newline: bytes = b"\r\n") -> bytes:
    """Return-Path, X-Original-To and Delivered-To lines, so a human reading the file sees the envelope."""
    lines = [f"Return-Path: <{_clean(envelope.mail_from)}>"]
    lines += [f"X-Original-To: {_clean(rcpt)}" for rcpt in envelope.rcpt_tos]
    lines += [f"Delivered-To: {_clean(rcpt)}" for rcpt in envelope.rcpt_tos]
    return b"".join(line.encode("utf-8") + newline for line in lines)


def _unique_name() -> str:
    """Maildir file name: time, microseconds, pid and a process counter make it unique per host."""
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}.{_HOST}"


def _ensure_maildir(path: Path, subfolder: bool) -> None:
    for part in ("tmp", "new", "cur"):
        (path / part).mkdir(parents=True, exist_ok=True)
    if subfolder:
        (path / "maildirfolder").touch(exist_ok=True)  # Maildir++ marks subfolders this way


def write_capture(root: Path, folder: str, data: bytes, envelope: Envelope) -> Path:
    """Store one message in `root/<folder>` (or its `.Junk` subfolder when tagged as spam).

    Durable before returning (file and directory fsynced), since "delivered" must mean it. Blocking:
    call it from a thread in async code. Returns the file's path in new/.
    """
    maildir = root / folder
    spam = is_spam(data)
    target = maildir / JUNK_FOLDER if spam else maildir
    _ensure_maildir(maildir, subfolder=False)
    if spam:
        _ensure_maildir(target, subfolder=True)
    newline = b"\r\n" if b"\r\n" in data[:4096] or not data else b"\n"
    name = _unique_name()
    new_path = target / "new" / name
    headers = envelope_headers(envelope, newline)
    write_durably(new_path, headers, data, tmp=target / "tmp" / name, mode=0o640, exclusive=True)
    return new_path
