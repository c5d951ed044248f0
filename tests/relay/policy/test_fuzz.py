"""Property-based fuzzing of the content parsers: arbitrary bytes and random MIME never crash or hang them.

Each check runs under a wall-clock budget per example (hypothesis' deadline, generous because the
test machine is shared). For random but well-formed MIME, the attachment check must also never fall
back to its catch-all ("message could not be inspected"), which would mean an internal crash.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import zipfile
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_relay.cleanup.headers import HeaderInjectionError, prepend_headers
from smtp_relay.config.policy_spec import AttachmentsSpec
from smtp_relay.policy.attachments import AttachmentFinding, inspect_attachments
from smtp_relay.policy.mime import _parse_single_part, parse_message
from smtp_relay.policy.spam_builtin import _SIMPLE_FROM, from_address, score_builtin
from tests.relay.policy.samples import zip_of

FUZZ = settings(
    max_examples=150, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
SPECS = st.builds(AttachmentsSpec, block_macros=st.booleans(), inspect_archives=st.booleans())
HEADER_NAMES = st.sampled_from(
    ["Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "Subject", "From", "Date", "MIME-Version"]
)
MIME_TYPES = st.sampled_from(
    ["text/plain", "text/html", "application/octet-stream", "application/zip", "image/png", "message/rfc822"]
)
# Text that tends to hit the parsers' corners: quotes, semicolons, encoded words, RFC 2231 stars, folding.
TRICKY_TEXT = st.lists(
    st.sampled_from([*"abcxyz.-_ =?*'\";\\%/\t\r\n!@<>()[]:,0123456789", "=?utf-8?B?", "?=", "é", "\x00", "exe"]),
    max_size=30,
).map("".join)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"MZ" + bytes(80), b"\x7fELF", b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(40)]),
    st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=50), max_size=3).map(zip_of),
)


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    """A multipart message with random parts, random (often hostile) parameters and payloads."""
    boundary = draw(st.sampled_from(["B", "==b==", "a'b", ""]))
    lines = ["From: a@example.com", "MIME-Version: 1.0", f'Content-Type: multipart/mixed; boundary="{boundary}"', ""]
    for _ in range(draw(st.integers(0, 4))):
        mime_type = draw(MIME_TYPES)
        name = draw(TRICKY_TEXT)
        payload = draw(PAYLOADS)
        encoding = draw(st.sampled_from(["base64", "quoted-printable", "7bit", "x-uuencode", "base64 junk"]))
        body = base64.encodebytes(payload).decode() if "base64" in encoding else payload.decode("latin-1")
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, max(len(body), 1)))]
        lines += [
            f"--{draw(st.sampled_from([boundary, boundary + 'x']))}",
            f'Content-Type: {mime_type}; name={draw(st.sampled_from(["", "*0", "*"]))}"{name}"',
            f"Content-Disposition: {draw(st.sampled_from(['attachment', 'inline', 'x']))}; filename*={name}",
            f"Content-Transfer-Encoding: {encoding}",
            *(f"{h}: {draw(TRICKY_TEXT)}" for h in draw(st.lists(HEADER_NAMES, max_size=2))),
            "",
            body,
        ]
    if draw(st.booleans()):
        lines.append(f"--{boundary}--")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


@FUZZ
@given(data=st.binary(max_size=2000), spec=SPECS)
def test_inspect_attachments_arbitrary_bytes(data: bytes, spec: AttachmentsSpec) -> None:
    finding = inspect_attachments(data, spec)
    assert finding is None or isinstance(finding, AttachmentFinding)


@FUZZ
@given(data=mime_messages(), spec=SPECS)
def test_inspect_attachments_random_mime(data: bytes, spec: AttachmentsSpec) -> None:
    finding = inspect_attachments(data, spec)
    reasons = ("extension", "executable", "macro", "archive", "malformed", "structure")
    assert finding is None or finding.reason in reasons
    assert finding is None or "could not be inspected" not in finding.detail, finding


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000), mime_messages()), spf=st.none() | st.text(max_size=10))
def test_score_builtin_never_raises(data: bytes, spf: str | None) -> None:
    report = score_builtin(data, spf_result=spf)
    assert report.score >= 0
    assert report.engine == "builtin"


@FUZZ
@given(
    data=st.binary(max_size=500),
    headers=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=300)), max_size=4),
)
def test_prepend_headers_never_injects(data: bytes, headers: list[tuple[str, str]]) -> None:
    """Either the headers are refused, or exactly the given header lines come first, each one field."""
    try:
        out = prepend_headers(data, headers)
    except HeaderInjectionError:
        return
    assert out.endswith(data)
    block = out[: len(out) - len(data)].decode("ascii")
    newline = "\n" if block and not block.endswith("\r\n") else "\r\n"
    fields = [line for line in block.split(newline) if line]
    starts = [line for line in fields if line[0] not in " \t"]
    assert len(starts) == len(headers)
    assert all(line.split(":", 1)[0] == name for line, (name, _) in zip(starts, headers, strict=True))
    assert all("\r" not in line and "\n" not in line and len(line) <= 998 for line in fields)


def test_fuzz_corpus_zip_of_zips_stays_inside_budget() -> None:
    """A regression seed for the archive walker: many nested empty zips of different compressions."""
    data = zip_of({"a.txt": b""}, compression=zipfile.ZIP_STORED)
    for level in range(3):
        data = zip_of({f"{i}-{level}.zip": data for i in range(8)})
    payload = base64.encodebytes(data).decode()
    message = (
        'From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: application/zip; name=n.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{payload}\r\n--B--\r\n"
    ).encode()
    assert inspect_attachments(message, AttachmentsSpec()) is None


@st.composite
def single_part_messages(draw: st.DrawFn) -> bytes:
    """Mostly well-formed messages with one part (where parse_message skips the feed parser's body
    loop), with odd headers, non-header lines, encodings and bodies mixed in."""
    odd = st.sampled_from(["\x0b", "\x0c", "\x1c", "\x85", "\u2028", ":", "\r\n", "\r\n\t"])
    value = st.lists(st.one_of(TRICKY_TEXT, odd), max_size=3).map("".join)
    lines = [f"{name}: {draw(value)}" for name in draw(st.lists(HEADER_NAMES, max_size=4))]
    if draw(st.booleans()):
        lines.append(f"Content-Type: {draw(MIME_TYPES)}; name={draw(TRICKY_TEXT)}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["not a header", " folded", "From x"])))
    body = draw(st.one_of(st.binary(max_size=300), PAYLOADS.map(lambda p: base64.encodebytes(p))))
    separator = draw(st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n"]))
    return (
        draw(st.sampled_from([b"", b"\r\n"])) + "\r\n".join(lines).encode("utf-8", "surrogateescape") + separator + body
    )


def assert_parses_like_the_stdlib(data: bytes) -> None:
    fast = parse_message(data)
    full = email.message_from_bytes(data, policy=email.policy.compat32)
    assert fast.items() == full.items()
    assert fast.is_multipart() == full.is_multipart()
    if not full.is_multipart():
        assert fast.get_payload() == full.get_payload()
        assert fast.get_payload(decode=True) == full.get_payload(decode=True)
    assert [type(d) for d in fast.defects] == [type(d) for d in full.defects]
    spec = AttachmentsSpec()
    assert inspect_attachments(data, spec, parsed=fast) == inspect_attachments(data, spec, parsed=full)
    assert score_builtin(data, parsed=fast) == score_builtin(data, parsed=full)


@FUZZ
@given(data=single_part_messages())
def test_parse_message_fast_path_equals_the_full_parse(data: bytes) -> None:
    assert_parses_like_the_stdlib(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n\r\nbody after an empty header section\r\n",
        b"\r\nX-Late: header after a blank first line\r\n\r\nbody\r\n",
        b"Subject: a\x0cX-Split: only str.splitlines() splits here\r\n\r\nbody\r\n",
        b"Subject: a\x1cb\r\n\tfolded\r\n\r\n.body\r\n",
        b"Subject: bare\rCR\r\n\r\nbody\r\n",
        b"From sender Mon Jan 1\r\nSubject: mbox\r\n\r\nbody\r\n",
        b":no-name\r\n\r\nbody\r\n",
    ],
)
def test_parse_message_edge_cases_parse_like_the_stdlib(data: bytes) -> None:
    assert_parses_like_the_stdlib(data)


def test_parse_message_takes_the_fast_path_for_plain_mail() -> None:
    """The equivalence above must be about the fast path: plain single-part mail does take it."""
    plain = b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\n.line two\r\n"
    fast = _parse_single_part(plain)
    assert fast is not None and fast.get_payload() == "line one\r\n.line two\r\n"
    assert _parse_single_part(b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\nx\r\n--B--\r\n") is None
    assert _parse_single_part(b"From: a@example.com\r\nnot a header\r\n\r\nbody\r\n") is None


FROM_PIECES = st.lists(
    st.sampled_from([*"aZ09.-_ +'\"<>()@,;:\\\t", "=?utf-8?q?x?=", "é", "\r\n ", "ex.com", "John"]), max_size=25
).map("".join)


@FUZZ
@given(
    sender=st.one_of(
        st.from_regex(_SIMPLE_FROM, fullmatch=True),  # every form the fast path takes...
        FROM_PIECES,  # ...and others, which must reach parseaddr
        st.builds("{} <{}@{}>".format, FROM_PIECES, FROM_PIECES, FROM_PIECES),
    )
)
def test_from_address_fast_path_agrees_with_parseaddr(sender: str) -> None:
    assert from_address(sender) == email.utils.parseaddr(sender)[1]


def test_from_address_fast_path_covers_the_plain_forms() -> None:
    for sender in ("Jane Doe <jane.doe@example.com>", "jane@example.com", "<jane@example.com>", " x-y <a+b@c.d> "):
        assert _SIMPLE_FROM.fullmatch(sender) is not None, sender
        assert from_address(sender) == email.utils.parseaddr(sender)[1]
