"""The quarantine store: durable round trip, two-phase release, crash recovery, unknown ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.quarantine import QuarantineError, QuarantineStore


class Clock:
    """Virtual time for the pure state machines."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ENVELOPE = Envelope("alice@example.com", ("bob@example.net", "carol@example.net"), client_ip="192.0.2.1", helo="h")
DATA = b"Subject: infected\r\n\r\nX5O!P%@AP...\r\n"


def test_quarantine_round_trip(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "quarantine", clock=Clock(1_700_000_000.5))
    entry_id = store.put(ENVELOPE, DATA, "virus: Eicar-Signature", ["550 5.7.1 virus found"])
    [entry] = store.list()
    assert entry.id == entry_id
    assert (entry.envelope, entry.reason, entry.verdicts, entry.time, entry.size) == (
        ENVELOPE,
        "virus: Eicar-Signature",
        ("550 5.7.1 virus found",),
        1_700_000_000.5,
        len(DATA),
    )
    assert store.get(entry_id) == entry
    assert store.data(entry_id) == DATA
    sidecar = json.loads((tmp_path / "quarantine" / f"{entry_id}.json").read_text())
    assert sidecar["envelope"]["rcpt_tos"] == ["bob@example.net", "carol@example.net"]

    envelope, data = store.release(entry_id)
    assert (envelope, data) == (ENVELOPE, DATA)
    assert store.list() == []
    with pytest.raises(QuarantineError):
        store.release(entry_id)  # a second release cannot get it too
    store.finish_release(entry_id)
    assert not list((tmp_path / "quarantine").rglob(f"{entry_id}*"))


def test_a_failed_release_lists_the_message_again(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    entry_id = store.put(ENVELOPE, DATA, "attachment: a.exe")
    store.release(entry_id)
    store.abort_release(entry_id)
    assert [e.id for e in store.list()] == [entry_id]


def test_a_release_interrupted_by_a_crash_is_listed_after_restart(tmp_path: Path) -> None:
    entry_id = QuarantineStore(tmp_path).put(ENVELOPE, DATA, "spam")
    QuarantineStore(tmp_path).release(entry_id)
    assert [e.id for e in QuarantineStore(tmp_path).list()] == [entry_id]


def test_delete_and_unknown_ids(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    first = store.put(ENVELOPE, DATA, "spam")
    second = store.put(ENVELOPE, b"other", "spam")
    store.delete(first)
    assert [e.id for e in store.list()] == [second]
    for bad in (first, "../../etc/passwd", "x"):
        with pytest.raises(QuarantineError):
            store.delete(bad)
        with pytest.raises(QuarantineError):
            store.get(bad)


def test_a_damaged_sidecar_does_not_hide_the_others(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    good = store.put(ENVELOPE, DATA, "spam")
    (tmp_path / "000000000000-000000000000.json").write_text("{not json")
    assert [e.id for e in store.list()] == [good]
