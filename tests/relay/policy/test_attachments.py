"""Attachment checks with plain data: each rule, the evasions it must see through, and clean mail passing."""

from __future__ import annotations

import base64
import zipfile

import pytest

from smtp_relay.config.policy_spec import AttachmentsSpec
from smtp_relay.policy import archive_formats, attachments, mime
from smtp_relay.policy.attachments import AttachmentFinding, inspect_attachments
from smtp_relay.policy.mime import parse_message
from tests.relay.policy.samples import (
    ELF,
    MACHO,
    PDF,
    PNG,
    SHEBANG,
    SPEC,
    check,
    message,
    ole2_document,
    ooxml,
    pe_executable,
    raw_attachment_message,
    zip_of,
)


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n").strip()


def test_clean_pdf_png_and_text_pass() -> None:
    assert check(message(("report.pdf", PDF), ("chart.png", PNG), ("notes.txt", b"plain notes"))) is None


def test_clean_docx_and_zip_of_documents_pass() -> None:
    assert check(message(("letter.docx", ooxml(macro=False)), ("docs.zip", zip_of({"a.pdf": PDF})))) is None


@pytest.mark.parametrize("name", ["setup.exe", "SETUP.EXE", "Setup.Exe", "run.js", "x.PS1", "tool.exe.", "tool.exe "])
def test_blocked_extension(name: str) -> None:
    finding = check(message((name, b"harmless bytes")))
    assert finding is not None
    assert finding.reason == "extension"
    assert finding.filename == name


def test_double_extension_is_named_in_the_detail() -> None:
    finding = check(message(("invoice.pdf.exe", b"harmless bytes")))
    assert finding == AttachmentFinding(
        "invoice.pdf.exe", "extension", "blocked extension .exe (double extension .pdf.exe)"
    )


def test_extension_not_in_the_list_passes() -> None:
    assert check(message(("setup.exe", b"harmless")), AttachmentsSpec(block_extensions=["js"])) is None
    assert check(message(("invoice.exe.pdf", PDF))) is None


def test_invisible_characters_do_not_hide_the_extension() -> None:
    finding = check(message(("invoice.e\u200bxe", b"x")))
    assert finding is not None and finding.reason == "extension"


def test_rfc2231_filename() -> None:
    data = raw_attachment_message(
        "Content-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment; filename*=utf-8''invoice%2Epdf%2Eexe",
        b64(b"harmless"),
    )
    finding = check(data)
    assert finding is not None and finding.reason == "extension"
    assert finding.filename == "invoice.pdf.exe"


def test_rfc2231_continuations() -> None:
    data = raw_attachment_message(
        'Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n filename*0="in";\r\n'
        ' filename*1="voice.";\r\n filename*2*=%65%78%65',
        b64(b"harmless"),
    )
    finding = check(data)
    assert finding is not None and finding.reason == "extension"


def test_encoded_word_filename() -> None:
    encoded = "=?utf-8?B?" + base64.b64encode(b"invoice.exe").decode() + "?="
    data = raw_attachment_message(
        f'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="{encoded}"',
        b64(b"harmless"),
    )
    finding = check(data)
    assert finding is not None and finding.reason == "extension"


def test_name_only_in_content_type() -> None:
    data = raw_attachment_message('Content-Type: application/octet-stream; name="update.scr"', b64(b"x"))
    finding = check(data)
    assert finding is not None and finding.filename == "update.scr"


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (pe_executable(), "Windows PE executable"),
        (ELF, "ELF executable"),
        (MACHO, "Mach-O executable"),
        (SHEBANG, "script with #! interpreter line"),
    ],
)
def test_executable_by_magic_bytes_whatever_the_name(content: bytes, kind: str) -> None:
    finding = check(message(("holiday-photo.jpg", content)))
    assert finding == AttachmentFinding("holiday-photo.jpg", "executable", kind)


def test_text_body_starting_with_shebang_is_not_an_executable() -> None:
    assert check(message(body="#!!! great news !!!\n")) is None


def test_mz_text_is_not_an_executable() -> None:
    assert check(message(("notes.txt", b"MZ is a postcode prefix, nothing more; this line is plain text."))) is None


def test_zipped_exe_by_name() -> None:
    finding = check(message(("docs.zip", zip_of({"readme.txt": b"hi", "payload.exe": b"harmless"}))))
    assert finding is not None
    assert finding.reason == "extension"
    assert finding.filename == "docs.zip/payload.exe"
    assert "inside an archive" in finding.detail


def test_zipped_executable_by_magic() -> None:
    finding = check(message(("docs.zip", zip_of({"photo.jpg": pe_executable()}))))
    assert finding == AttachmentFinding("docs.zip/photo.jpg", "executable", "Windows PE executable")


def test_nested_zip() -> None:
    inner = zip_of({"deeper/tool.bat": b"echo hi"})
    finding = check(message(("outer.zip", zip_of({"inner.zip": zip_of({"inner2.zip": inner})}))))
    assert finding is not None
    assert finding.reason == "extension"
    assert finding.filename == "outer.zip/inner.zip/inner2.zip/deeper/tool.bat"


def test_zip_with_innocent_name_is_still_opened() -> None:
    finding = check(message(("figures.dat", zip_of({"run.vbs": b"x"}))))
    assert finding is not None and finding.reason == "extension"


def test_archives_not_inspected_when_disabled() -> None:
    spec = AttachmentsSpec(inspect_archives=False)
    assert check(message(("docs.zip", zip_of({"payload.exe": pe_executable()}))), spec) is None


def test_too_deeply_nested_archives_are_refused() -> None:
    data = zip_of({"leaf.txt": b"x"})
    for level in range(attachments.ARCHIVE_MAX_DEPTH + 1):
        data = zip_of({f"level{level}.zip": data})
    finding = check(message(("deep.zip", data)))
    assert finding is not None and finding.reason == "archive"


def test_too_many_members_is_a_bomb() -> None:
    members = {f"f{i}.txt": b"" for i in range(archive_formats.ARCHIVE_MAX_MEMBERS + 1)}
    finding = check(message(("many.zip", zip_of(members, compression=zipfile.ZIP_STORED))))
    assert finding is not None and finding.reason == "archive"


def test_archive_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_formats, "ARCHIVE_BUDGET", 1024 * 1024)
    inner = zip_of({"zeros.bin": bytes(2 * 1024 * 1024)}, compression=zipfile.ZIP_STORED)
    finding = check(message(("bomb.zip", zip_of({"inner.zip": inner}))))
    assert finding is not None and finding.reason == "archive"
    assert "budget" in finding.detail


def test_zip_bomb_of_nested_zips_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """42.zip style: 16 copies per level; the member and depth limits stop it long before inflation hurts.

    The bound is the work done, read from the message's inspection budget: 512 GiB of zeros inside,
    less than one MiB inflated and a few dozen members listed before the depth limit refuses it.
    """
    budgets: list[attachments.Budget] = []

    class CountedBudget(archive_formats.Budget):
        def __init__(self, *args: int, inline: bool = False) -> None:
            super().__init__(*args, inline=inline)
            budgets.append(self)

    monkeypatch.setattr(attachments, "Budget", CountedBudget)
    data = zip_of({"zeros.bin": bytes(8 * 1024 * 1024)})
    for _ in range(4):
        data = zip_of({f"{i}.zip": data for i in range(16)})
    finding = check(message(("42.zip", data)))
    assert finding is not None and finding.reason == "archive"
    [budget] = budgets
    assert archive_formats.ARCHIVE_BUDGET - budget.bytes_left < 1024 * 1024  # not even the innermost 8 MiB file
    assert archive_formats.ARCHIVE_MAX_MEMBERS - budget.members_left <= 100


def test_docm_with_vba_project() -> None:
    finding = check(message(("budget.docm", ooxml(macro=True))))
    assert finding is not None
    assert finding.reason == "macro"
    assert "vbaProject.bin" in finding.detail


def test_docm_renamed_docx_and_zipped_is_found() -> None:
    finding = check(message(("budget.zip", zip_of({"budget.docx": ooxml(macro=True)}))))
    assert finding is not None and finding.reason == "macro"


def test_macros_allowed_when_disabled() -> None:
    spec = AttachmentsSpec(block_macros=False)
    assert check(message(("budget.docm", ooxml(macro=True)), ("old.doc", ole2_document("Macros", "VBA"))), spec) is None


@pytest.mark.parametrize("streams", [("Macros", "VBA"), ("_VBA_PROJECT_CUR", "VBA"), ("_VBA_PROJECT",)])
def test_ole2_with_vba_marker(streams: tuple[str, ...]) -> None:
    finding = check(message(("report.xls", ole2_document("Workbook", *streams))))
    assert finding == AttachmentFinding("report.xls", "macro", "Office (OLE2) document with a VBA project")


def test_ole2_without_macros_passes() -> None:
    assert check(message(("letter.doc", ole2_document("WordDocument", "1Table", "SummaryInformation")))) is None


def test_broken_zip_names_are_read_from_local_headers() -> None:
    damaged = zip_of({"evil.exe": b"x" * 100})[:60]  # the central directory is gone
    finding = check(message(("damaged.zip", damaged)))
    assert finding is not None and finding.reason == "extension" and finding.filename == "damaged.zip/evil.exe"


def test_unreadable_zip_is_malformed() -> None:
    finding = check(message(("damaged.zip", b"PK\x03\x04" + b"\xff" * 10)))
    assert finding is not None and finding.reason == "malformed"


def test_attachment_in_forwarded_message() -> None:
    inner = message(("tool.exe", b"x"))
    outer = (
        b"From: ann@example.com\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\n--OUT\r\nContent-Type: message/rfc822\r\n\r\n'
        + inner
        + b"\r\n--OUT--\r\n"
    )
    finding = check(outer)
    assert finding is not None and finding.filename == "tool.exe"


@pytest.mark.parametrize("boundary", [b"", b"; boundary=", b'; boundary=""'])
def test_multipart_without_a_boundary_is_malformed(boundary: bytes) -> None:
    """Readers guess where its parts are, each differently: refused whatever the parts hold."""
    data = (
        b"From: ann@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed"
        + boundary
        + b'\r\n\r\n--XYZ\r\nContent-Type: application/octet-stream;\r\n name="payload.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XYZ--\r\n"
    )
    assert check(data) == AttachmentFinding("", "structure", "multipart part without a boundary")


def test_wrong_boundary_does_not_hide_attachment_names() -> None:
    data = (
        b"From: ann@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="abc"\r\n\r\n'
        b"--abd\r\nContent-Disposition: attachment; filename=run.bat\r\n\r\necho\r\n--abd--\r\n"
    )
    finding = check(data)
    assert finding is not None and finding.filename == "run.bat"


def test_base64_with_junk_is_decoded_leniently() -> None:
    encoded = base64.b64encode(pe_executable()).decode()
    junky = "\r\n".join(encoded[i : i + 20] + "!*" for i in range(0, len(encoded), 20))
    data = raw_attachment_message('Content-Type: image/jpeg; name="a.jpg"', junky)
    finding = check(data)
    assert finding is not None and finding.reason == "executable"


def test_base64_split_by_padding_is_decoded_leniently() -> None:
    first = base64.b64encode(b"M").decode()  # "TQ==": the stdlib stops at this padding
    rest = base64.b64encode(pe_executable()[1:]).decode()
    data = raw_attachment_message('Content-Type: image/jpeg; name="a.jpg"', first + rest)
    finding = check(data)
    assert finding is not None and finding.reason == "executable"


@pytest.mark.parametrize(
    "data", [b"", b"\r\n", b"\x00" * 100, b"Content-Type: text/plain; boundary=\r\n\r\n--\r\n", b"\xff\xfe"]
)
def test_empty_and_garbage_without_attachments_pass(data: bytes) -> None:
    assert check(data) is None


def test_uuencoded_exe_in_text_body() -> None:
    finding = check(message(body="Here it is:\nbegin 644 update.exe\nM5&AI<R!I<R!A(&9I;&4*\n`\nend\n"))
    assert finding is not None and finding.filename == "update.exe"


def test_parsed_tree_can_be_shared() -> None:
    data = message(("docs.zip", zip_of({"payload.exe": b"x"})))
    assert inspect_attachments(data, SPEC, parsed=parse_message(data)) == check(data)
    assert inspect_attachments(message(), SPEC, parsed=parse_message(message())) is None


def nested_multiparts(depth: int) -> bytes:
    opening = "".join(f'--b{i}x\r\nContent-Type: multipart/mixed; boundary="b{i + 1}x"\r\n\r\n' for i in range(depth))
    head = 'From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0x"\r\n\r\n'
    return (head + opening).encode()


def test_nesting_bomb_is_refused_quickly(parser_inputs: list[int]) -> None:
    """Refused from a count of its multipart headers, before any parse: none of the 3000 parts is walked."""
    finding = check(nested_multiparts(3000))
    assert parser_inputs == []
    assert finding is not None
    assert finding.reason == "structure"
    assert "multipart" in finding.detail


def test_moderate_nesting_is_walked() -> None:
    depth = mime.MAX_NESTING_DEPTH - 1
    data = nested_multiparts(depth)  # the leaf below is at MAX_NESTING_DEPTH: within the limit
    data += f"--b{depth}x\r\nContent-Type: application/octet-stream; name=deep.exe\r\n\r\nx\r\n".encode()
    finding = check(data)
    assert finding is not None and finding.filename == "deep.exe"


def test_nesting_deeper_than_the_limit_is_malformed() -> None:
    depth = mime.MAX_NESTING_DEPTH
    data = nested_multiparts(depth) + f"--b{depth}x\r\nContent-Type: text/plain\r\n\r\nx\r\n".encode()
    assert data.count(b"multipart/") <= mime.MAX_MULTIPARTS  # refused for its depth, not its part count
    finding = check(data)
    assert finding == AttachmentFinding("", "structure", f"parts nested deeper than {mime.MAX_NESTING_DEPTH} levels")
