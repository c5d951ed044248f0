"""Committing to the spool: durable before it returns, group-committed, and never a partial record,
even when the process is killed mid-commit."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from smtp_relay.model.envelope import Envelope, StoredMessage
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import Counter, envelope, segment_files


async def test_commit_and_recover_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    envelopes = [
        envelope("bob@example.net", "carol@example.net"),
        Envelope("", ("postmaster@example.org",), is_bounce=True, received_at=5.0),
        Envelope(
            "j\u00f6rg@b\u00fccher.example",
            ("\u00e9l\u00e8ve@\u00e9cole.example",),
            smtputf8=True,
            body_8bit=True,
            auth_user="u1",
            received_at=7.0,
        ),
    ]
    bodies = [b"Subject: one\r\n\r\nbody\r\n", b"", os.urandom(200_000)]
    stored = [await spool.commit(e, d) for e, d in zip(envelopes, bodies, strict=True)]
    assert [m.id for m in stored] == sorted(m.id for m in stored)
    assert len({m.id for m in stored}) == 3
    assert all(m.id.isalnum() and m.id.isascii() for m in stored)
    assert stored[0].pending == {"bob@example.net", "carol@example.net"}
    assert [await spool.read(m) for m in stored] == bodies
    assert spool.depth() == 3
    await spool.close()
    await spool.close()  # idempotent

    again = Spool(root)
    recovered = await again.open()
    try:
        assert [m.id for m in recovered] == [m.id for m in stored]
        assert [m.envelope for m in recovered] == envelopes
        assert [m.size for m in recovered] == [len(b) for b in bodies]
        assert [m.pending for m in recovered] == [set(e.rcpt_tos) for e in envelopes]
        assert [await again.read(m) for m in recovered] == bodies
        newer = await again.commit(envelope(), b"later")
        assert newer.id > stored[-1].id
    finally:
        await again.close()


async def test_received_at_is_stamped_when_missing(spool: Spool) -> None:
    message = await spool.commit(Envelope("a@example.org", ("b@example.net",)), b"x")
    assert message.envelope.received_at > 1_600_000_000


async def test_concurrent_commits_share_one_fdatasync(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    fdatasync = Counter(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    synced_before_return: list[int] = []

    async def one(i: int) -> StoredMessage:
        message = await spool.commit(envelope(f"r{i}@example.net"), f"message {i}\r\n".encode() * 50)
        synced_before_return.append(fdatasync.calls)
        return message

    messages = await asyncio.gather(*(one(i) for i in range(64)))
    assert 1 <= fdatasync.calls <= 2, fdatasync.fds
    assert all(n >= 1 for n in synced_before_return)
    assert len({m.id for m in messages}) == 64
    assert [await spool.read(m) for m in messages[:3]] == [f"message {i}\r\n".encode() * 50 for i in range(3)]

    more = await asyncio.gather(*(one(i) for i in range(300)))
    assert len(more) == 300
    assert fdatasync.calls <= 2 + 8, "300 concurrent commits need at most a few batches of 64"


async def test_new_segment_fsyncs_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, segment_max_bytes=1)
    await spool.open()
    fsync = Counter(os.fsync)
    monkeypatch.setattr(os, "fsync", fsync)
    try:
        for _ in range(3):
            await spool.commit(envelope(), b"data")
        assert len(segment_files(root)) == 3
        assert fsync.fds.count(str(root)) == 3
    finally:
        await spool.close()


async def test_write_error_raises_and_never_leaves_a_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    before = await spool.commit(envelope(), b"before")
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output"):
        await spool.commit(envelope(), b"lost")
    monkeypatch.setattr(os, "fdatasync", real)
    after = await spool.commit(envelope(), b"after")
    assert spool.depth() == 2
    await spool.close()
    again = Spool(root)
    recovered = await again.open()
    assert [m.id for m in recovered] == [before.id, after.id]
    assert [await again.read(m) for m in recovered] == [b"before", b"after"]
    await again.close()


async def test_cancelled_commit_is_dropped_once_written(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, batch_window=0.05)
    await spool.open()
    task = asyncio.create_task(spool.commit(envelope(), b"the client hung up"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await spool.flush()
    assert spool.depth() == 0
    await spool.close()
    again = Spool(root)
    assert await again.open() == []
    await again.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from smtp_relay.model.envelope import Envelope
    from smtp_relay.queue.spool.store import Spool

    async def main() -> None:
        spool = Spool(Path(sys.argv[1]), segment_max_bytes=256 * 1024)
        await spool.open()
        async def worker(w: int) -> None:
            for i in range(1_000_000):
                data = (f"{w}-{i} ".encode()) * 300
                message = await spool.commit(Envelope("a@x.org", (f"r{w}@y.org",), received_at=1.0), data)
                if i % 3 == 0:
                    spool.finish(message)
                    print("F", message.id, flush=True)
                else:
                    print("C", message.id, len(data), flush=True)
        await asyncio.gather(*(worker(w) for w in range(8)))

    asyncio.run(main())
    """
)


async def test_sigkill_mid_commit_loses_no_acknowledged_message(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(root), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    lines: list[str] = []
    try:
        while len(lines) < 600:
            line = await child.stdout.readline()
            assert line, (await child.stderr.read()).decode()
            lines.append(line.decode())
    finally:
        child.kill()  # SIGKILL, typically with commits in flight
        rest = await child.stdout.read()
        await child.wait()
    lines += rest.decode().splitlines()
    assert child.returncode == -signal.SIGKILL
    acknowledged = {p[1]: int(p[2]) for p in (line.split() for line in lines) if p and p[0] == "C"}
    finished = {p[1] for p in (line.split() for line in lines) if p and p[0] == "F"}

    spool = Spool(root)
    recovered = {m.id: m for m in await spool.open()}
    try:
        missing = set(acknowledged) - set(recovered)
        assert not missing, f"{len(missing)} acknowledged message(s) lost"
        for message_id, size in list(acknowledged.items())[:50]:
            assert len(await spool.read(recovered[message_id])) == size
        assert all(len(m.pending) == 1 and m.envelope.mail_from == "a@x.org" for m in recovered.values())
        assert finished, "the child finished some messages before it was killed"
    finally:
        await spool.close()
