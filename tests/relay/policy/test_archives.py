"""Archives and names that used to carry an executable past the attachment check (issue 9, item 4), and
MIME that readers may disagree about: each evasion refused, clean archives and honest MIME passing."""

from __future__ import annotations

import bz2
import zipfile

import pytest

from smtp_relay.config.policy_spec import AttachmentsSpec
from smtp_relay.policy import archive_formats, attachments, mime
from smtp_relay.policy.attachments import AttachmentFinding, NeedsWorker, blocked_extensions, inspect_attachments
from tests.relay.policy.archive_samples import (
    gzip_of,
    rar4_of,
    rar5_header_encrypted,
    rar5_of,
    seven_zip_of,
    tar_of,
)
from tests.relay.policy.samples import PDF, SPEC, check, message, pe_executable, zip_of

# --- zip wherever it starts -------------------------------------------------------------------


def test_zip_behind_junk_is_listed_by_its_central_directory() -> None:
    archive = b"this is not a zip\r\n" * 50 + zip_of({"payload.exe": b"x"})
    assert not archive.startswith(b"PK")
    assert zipfile.ZipFile(__import__("io").BytesIO(archive)).namelist() == ["payload.exe"]  # what unzip sees
    finding = check(message(("invoice.dat", archive)))
    assert finding is not None and finding.filename == "invoice.dat/payload.exe" and finding.reason == "extension"


def test_zip_behind_junk_with_more_than_64_kib_after_its_end_is_still_found() -> None:
    archive = bytes(1000) + zip_of({"payload.exe": b"x"}) + b"\xff" * 100_000
    finding = check(message(("invoice.bin", archive)))
    assert finding is not None and finding.filename == "invoice.bin/payload.exe"


def test_zip_behind_junk_holding_an_executable_by_content() -> None:
    finding = check(message(("data.bin", b"junk" * 10 + zip_of({"readme.txt": pe_executable()}))))
    assert finding is not None and finding.reason == "executable" and finding.filename == "data.bin/readme.txt"


def test_junk_zip_nested_in_a_zip_by_archive_name() -> None:
    inner = b"stub junk" * 3 + zip_of({"evil.hta": b"<script>"})
    finding = check(message(("outer.zip", zip_of({"inner.zip": inner}))))
    assert finding is not None and finding.filename == "outer.zip/inner.zip/evil.hta"


@pytest.mark.parametrize("record", [bytes(18), b"\xff" * 18])  # a stray record declaring 0 or 65535 entries
def test_binary_with_a_stray_end_record_signature_passes(record: bytes) -> None:
    assert check(message(("photo.jpg", b"\xff\xd8\xff\xe0" + bytes(100) + b"PK\x05\x06" + record + bytes(40)))) is None


# --- gzip, tar, 7z, rar -------------------------------------------------------------------------


def test_exe_gz_is_an_executable_by_its_double_extension() -> None:
    finding = check(message(("evil.exe.gz", gzip_of(b"harmless"))))
    assert finding == AttachmentFinding("evil.exe.gz", "extension", "blocked extension .exe (double extension .exe.gz)")


@pytest.mark.parametrize("name", ["evil.exe.zip", "evil.exe.7z", "evil.EXE.tar.gz", "evil.scr.rar", "evil.js.bz2"])
def test_double_extensions_behind_archive_suffixes(name: str) -> None:
    finding = check(message((name, b"not really an archive")))
    assert finding is not None and finding.reason == "extension" and finding.filename == name


def test_archive_suffix_after_a_harmless_extension_passes() -> None:
    assert check(message(("report.pdf.gz", gzip_of(PDF)))) is None


def test_gzip_inner_name_from_its_header() -> None:
    finding = check(message(("invoice.gz", gzip_of(b"harmless", fname="evil.exe"))))
    assert finding is not None and finding.filename == "invoice.gz/evil.exe" and finding.reason == "extension"


def test_gzip_content_is_inspected() -> None:
    finding = check(message(("update.gz", gzip_of(pe_executable()))))
    assert finding is not None and finding.reason == "executable" and finding.filename == "update.gz/update"


TARS = [("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"), ("a.tar", "w"), ("a.tar.bz2", "w:bz2"), ("a.tar.xz", "w:xz")]


@pytest.mark.parametrize(("name", "mode"), [*TARS, ("innocent.dat", "w:gz")])
def test_tar_members_are_listed(name: str, mode: str) -> None:
    archive = tar_of({"docs/readme.txt": b"hello", "docs/evil.exe": b"x"}, mode)
    finding = check(message((name, archive)))
    assert finding is not None and finding.filename == f"{name}/docs/evil.exe" and finding.reason == "extension"


def test_tar_member_content_and_nested_zip() -> None:
    archive = tar_of({"a.pdf": pe_executable()}, "w:gz")
    assert check(message(("a.tgz", archive))) == AttachmentFinding("a.tgz/a.pdf", "executable", "Windows PE executable")
    nested = tar_of({"inner.zip": zip_of({"run.lnk": b"L"})}, "w:gz")
    finding = check(message(("a.tgz", nested)))
    assert finding is not None and finding.filename == "a.tgz/inner.zip/run.lnk"


def test_clean_archives_pass() -> None:
    clean = {"report.pdf": PDF, "notes.txt": b"notes"}
    for name, archive in [
        ("a.tar.gz", tar_of(clean, "w:gz")),
        ("a.7z", seven_zip_of(clean)),
        ("a.rar", rar5_of(clean)),
        ("a.gz", gzip_of(PDF, fname="report.pdf")),
        ("a.bz2", bz2.compress(PDF)),
    ]:
        assert check(message((name, archive))) is None, name


@pytest.mark.parametrize("build", [rar5_of, rar4_of])
def test_rar_names_without_an_unrar_binary(build: object) -> None:
    archive = build({"docs/a.txt": b"hi", "docs/evil.exe": b"MZ"})  # type: ignore[operator]
    finding = check(message(("files.rar", archive)))
    assert finding is not None and finding.filename == "files.rar/docs/evil.exe"
    sfx = check(message(("setup.dat", b"\x00junk" * 100 + archive)))  # behind a stub, as a self-extractor
    assert sfx is not None and sfx.filename == "setup.dat/docs/evil.exe"


def test_seven_zip_names() -> None:
    finding = check(message(("files.7z", seven_zip_of({"a.txt": b"hi", "b/evil.wsf": b"x"}))))
    assert finding is not None and finding.filename == "files.7z/b/evil.wsf"


@pytest.mark.parametrize(("name", "archive"), [("a.7z", seven_zip_of({"x.txt": b"x"}, "pw")),
                                               ("a.rar", rar5_header_encrypted())])  # fmt: skip
def test_archives_with_encrypted_names_are_unscannable(name: str, archive: bytes) -> None:
    finding = check(message((name, archive)))
    assert finding is not None and finding.reason == "archive" and "encrypted" in finding.detail


def test_damaged_archives_at_their_start_are_malformed() -> None:
    for name, archive in [
        ("a.rar", b"Rar!\x1a\x07\x01\x00" + b"\xff" * 40),
        ("a.7z", b"7z\xbc\xaf\x27\x1c" + bytes(9)),
    ]:
        finding = check(message((name, archive)))
        assert finding is not None and finding.reason == "malformed", (name, finding)


def test_gzip_bomb_is_too_large_to_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_formats, "ARCHIVE_BUDGET", 4 * 1024 * 1024)
    bomb = message(("zeros.tar.gz", gzip_of(bytes(8 * 1024 * 1024))))
    assert len(bomb) < 64 * 1024
    finding = check(bomb)
    assert finding == AttachmentFinding(
        "zeros.tar.gz", "archive", "archive too large to inspect (beyond the inspection budget)"
    )


def test_zip_declaring_more_entries_than_the_budget_is_refused_before_listing() -> None:
    """Its end record is read first: zipfile would build an object per entry of a huge directory."""
    archive = bytearray(zip_of({"a.txt": b"x"}))
    end = archive.rfind(b"PK\x05\x06")
    archive[end + 8 : end + 12] = (60000).to_bytes(2, "little") * 2  # entries on this disk, entries in all
    finding = check(message(("many.zip", bytes(archive))))
    assert finding is not None and finding.reason == "archive" and "too large" in finding.detail


def test_inline_inspection_hands_big_archives_to_the_worker() -> None:
    bomb = message(("zeros.zip", zip_of({"zeros.tar": bytes(4 * attachments.INLINE_ARCHIVE_BUDGET)})))
    with pytest.raises(NeedsWorker):
        inspect_attachments(bomb, SPEC, inline=True)
    with pytest.raises(NeedsWorker):  # 7z listing is never done on the event loop
        inspect_attachments(message(("a.7z", seven_zip_of({"a.txt": b"x"}))), SPEC, inline=True)
    assert inspect_attachments(message(("a.zip", zip_of({"a.txt": b"x"}))), SPEC, inline=True) is None


# --- the block list -------------------------------------------------------------------------------

GATEWAY_TYPES = [
    "hta",
    "lnk",
    "iso",
    "img",
    "vhd",
    "vhdx",
    "wsf",
    "wsh",
    "cpl",
    "msc",
    "scr",
    "pif",
    "com",
    "bat",
    "cmd",
    "vbs",
    "vbe",
    "js",
    "jse",
    "ps1",
    "msi",
    "msp",
    "jar",
    "reg",
    "chm",
    "appx",
    "appxbundle",
    "msix",
    "application",
    "gadget",
    "inf",
    "scf",
    "url",
    "xll",
    "one",
]


@pytest.mark.parametrize("ext", GATEWAY_TYPES)
def test_default_list_blocks_what_mail_gateways_block(ext: str) -> None:
    finding = check(message((f"file.{ext}", b"x")))
    assert finding is not None and finding.reason == "extension"


def test_an_explicit_list_is_exactly_what_it_says() -> None:
    spec = AttachmentsSpec(block_extensions=["exe"])
    assert blocked_extensions(spec) == {"exe"}
    assert check(message(("page.hta", b"x")), spec) is None
    assert set(GATEWAY_TYPES) <= blocked_extensions(AttachmentsSpec())


# --- ambiguous MIME -----------------------------------------------------------------------------


def multipart(content_type: str, part_headers: str = "Content-Type: text/plain", boundary: str = "A") -> bytes:
    return (
        f"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n"
        f"--{boundary}\r\n{part_headers}\r\n\r\nhello\r\n--{boundary}--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("content_type", "part_headers", "problem"),
    [
        ('multipart/mixed; boundary="A"; boundary="B"', "Content-Type: text/plain", "conflicting boundary parameters"),
        ("multipart/mixed; boundary=A; boundary*=utf-8''B", "", "conflicting boundary parameters"),
        ('multipart/mixed; boundary="A"', 'Content-Disposition: attachment; filename="a.pdf"; filename="a.exe"',
         "conflicting filename parameters"),
        ('multipart/mixed; boundary="A"', "Content-Type: application/pdf; name=a.pdf; name*=utf-8''a.exe",
         "conflicting name parameters"),
        ('multipart/mixed; boundary="A"', "Content-Type: text/plain\r\nContent-Type: application/x-msdownload",
         "conflicting content-type headers"),
        ('multipart/mixed; boundary="A"', "Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64",
         "conflicting content-transfer-encoding headers"),
        ('multipart/mixed; boundary="A"', 'Content-Type: multipart/alternative; boundary="A"',
         "nested multipart reuses an enclosing boundary"),
    ],
)  # fmt: skip
def test_ambiguous_mime_is_malformed(content_type: str, part_headers: str, problem: str) -> None:
    assert check(multipart(content_type, part_headers)) == AttachmentFinding("", "structure", problem)


def test_unambiguous_repetition_passes() -> None:
    assert check(multipart('multipart/mixed; boundary="A"; boundary=A')) is None  # the same boundary twice
    fallback = "Content-Disposition: attachment; filename=\"Resume.pdf\"; filename*=utf-8''R%C3%A9sum%C3%A9.pdf"
    assert check(multipart('multipart/mixed; boundary="A"', fallback)) is None  # ASCII fallback, same type


def nested_messages(depth: int) -> bytes:
    return b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * depth + b"From: z\r\n\r\nbody\r\n"


def test_3000_nested_messages_are_refused_without_parsing(parser_inputs: list[int]) -> None:
    finding = check(nested_messages(3000))
    assert finding is not None and finding.reason == "structure"
    assert parser_inputs == []  # not given to the recursive parser at all


def test_nested_messages_deeper_than_the_limit_are_malformed() -> None:
    depth = mime.MAX_NESTING_DEPTH + 1
    assert depth <= mime.MAX_MULTIPARTS
    assert check(nested_messages(depth)) == AttachmentFinding(
        "", "structure", f"parts nested deeper than {mime.MAX_NESTING_DEPTH} levels"
    )
    assert check(nested_messages(mime.MAX_NESTING_DEPTH - 1)) is None
