"""The spool's bytes on disk, as its records module documents them: spools written by an earlier
version must keep opening, so these tests build and read the format by hand, not with the module."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from smtp_relay.model.envelope import Envelope, QueueState
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import segment_files

HEADER = struct.Struct("!4sIQI")


def frame(magic: bytes, meta: bytes, data: bytes = b"") -> bytes:
    """header = magic, u32 meta length, u64 data length, u32 CRC-32 over the first 16 bytes + meta + data."""
    head = struct.pack("!4sIQ", magic, len(meta), len(data))
    return head + struct.pack("!I", zlib.crc32(head + meta + data)) + meta + data


def frames(raw: bytes, magic: bytes) -> list[tuple[bytes, bytes]]:
    """(meta, data) of every frame, checking magic and CRC; the bytes must end on a frame boundary."""
    out = []
    pos = 0
    while pos < len(raw):
        got, meta_len, data_len, crc = HEADER.unpack_from(raw, pos)
        assert got == magic
        meta = raw[pos + HEADER.size : pos + HEADER.size + meta_len]
        data = raw[pos + HEADER.size + meta_len : pos + HEADER.size + meta_len + data_len]
        assert crc == zlib.crc32(raw[pos : pos + 16] + meta + data)
        out.append((meta, data))
        pos += HEADER.size + meta_len + data_len
    assert pos == len(raw)
    return out


async def test_commit_and_progress_write_the_documented_bytes(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, journal_delay=0.0)
    await spool.open()
    envelope = Envelope("j\u00f6rg@example.org", ("a@x.net", "b@x.net"), client_ip="192.0.2.1", received_at=5.5)
    message = await spool.commit(envelope, b"Subject: hi\r\n\r\nbody\r\n")
    message.attempts = 1
    message.next_attempt = 7.0
    message.last_error = "451 4.3.0 later"
    spool.record_attempt(message, ["a@x.net"])
    await spool.flush()
    await spool.close()

    (segment,) = segment_files(root)
    assert segment.name == "seg-0000000001.dat"
    ((meta, data),) = frames(segment.read_bytes(), b"RFS1")
    assert data == b"Subject: hi\r\n\r\nbody\r\n"
    assert meta == (
        '{"id":"' + message.id + '","env":{"mail_from":"j\u00f6rg@example.org","rcpt_tos":["a@x.net","b@x.net"],'
        '"client_ip":"192.0.2.1","helo":"","auth_user":null,"smtputf8":false,"body_8bit":false,'
        '"received_at":5.5,"is_bounce":false}}'
    ).encode("utf-8")
    # The entry appended after the attempt; the close rewrote nothing (the current segment holds mail).
    ((entries, no_data),) = frames((root / "journal").read_bytes(), b"RFJ1")
    assert no_data == b""
    assert entries == b'[{"i":"%s","s":["a@x.net"],"a":1,"n":7.0,"e":"451 4.3.0 later"}]' % message.id.encode()


async def test_a_spool_written_by_hand_opens_with_its_progress(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    root.mkdir()

    def record(message_id: str, *rcpts: str) -> bytes:
        env = {"mail_from": "s@example.org", "rcpt_tos": list(rcpts), "received_at": 1.0, "unknown_later_field": 1}
        return frame(b"RFS1", json.dumps({"id": message_id, "env": env}).encode(), f"data of {message_id}".encode())

    (root / "seg-0000000007.dat").write_bytes(
        record("00000000000001", "a@x.net", "b@x.net") + record("00000000000002", "c@x.net")
    )
    (root / "seg-0000000008.dat").write_bytes(record("00000000000003", "d@x.net"))
    entries = [
        {"i": "00000000000001", "s": ["a@x.net"], "a": 2, "n": 4_000_000_000.0, "e": "451 busy"},
        {"i": "00000000000003", "d": 1},
    ]
    (root / "journal").write_bytes(frame(b"RFJ1", json.dumps(entries[:1]).encode()) + frame(b"RFJ1", b"[]"))
    with (root / "journal").open("ab") as journal:
        journal.write(frame(b"RFJ1", json.dumps(entries[1:]).encode()))

    spool = Spool(root)
    recovered = await spool.open()
    try:
        assert [m.id for m in recovered] == ["00000000000001", "00000000000002"]
        first, second = recovered
        assert first.pending == {"b@x.net"}
        assert (first.attempts, first.next_attempt, first.last_error) == (2, 4_000_000_000.0, "451 busy")
        assert first.state is QueueState.DEFERRED
        assert second.pending == {"c@x.net"} and second.state is QueueState.ACTIVE
        assert first.envelope == Envelope("s@example.org", ("a@x.net", "b@x.net"), received_at=1.0)
        assert [await spool.read(m) for m in recovered] == [b"data of 00000000000001", b"data of 00000000000002"]
        assert [p.name for p in segment_files(root)] == ["seg-0000000007.dat"]  # all of 8 was finished
        newer = await spool.commit(Envelope("s@example.org", ("e@x.net",)), b"new")
        assert newer.id > "00000000000002"
    finally:
        await spool.close()
    assert [p.name for p in segment_files(root)] == ["seg-0000000007.dat", "seg-0000000009.dat"]
