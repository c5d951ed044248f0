"""Hand-off between real relay processes: a draining relay whose upstream is down gives its queue to one that stays.

A's upstream is a closed port, B's a real smtp-sink. `POST /drain` naming B empties A's spool into B's, with each
message's arrival time and attempts as A had them; a kill -9 of A in the middle loses nothing (a duplicate at
most, counted); B refuses malformed hand-offs with 400 and the reason, and anyone without the token with 401.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from bench.peers.ports import closed_port, free_port

from smtp_relay.admin.handoff_wire import CONTENT_TYPE, encode
from smtp_relay.model.envelope import Envelope, StoredMessage
from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.peers


def _spec(port: int, upstream: int, schedule: str = "1h") -> dict[str, Any]:
    return {
        "listeners": [{"name": "relay", "port": port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "policy": {"spam": {"engine": "off"}},
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": upstream, "tls": "none"}]}},
        "queue": {"retry": {"schedule": [schedule], "maxAge": "5d"}},
    }


def _send(port: int, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "user@example.net", subject
    msg["Message-ID"] = f"<{subject}@example.com>"
    msg.set_content(f"body of {subject}\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("app@example.com", ["user@example.net", "other@example.net"], msg.as_bytes(policy=SMTP))


def _rows(relay: RelayProcess) -> list[dict[str, Any]]:
    """Every queued message of a relay's spools (all workers), read from the index: arrival, attempts, meta."""
    rows = []
    for index in sorted(relay.spool.rglob("index.sqlite")):
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
            for qid, received, attempts, meta in conn.execute("SELECT id, received, attempts, meta FROM messages"):
                rows.append({"id": f"{qid:014X}", "received": received, "attempts": attempts, **json.loads(meta)})
    return rows


def _drain(relay: RelayProcess, *peers: RelayProcess) -> dict[str, Any]:
    body = json.dumps({"peers": [p.admin_url for p in peers]}).encode()
    status, text = relay.http("/drain", method="POST", body=body)
    assert status == 200, text
    return dict(json.loads(text))


def _queued(relay: RelayProcess) -> int:
    return int(relay.queue()["queue"]["total"])


def _subjects(sink: Any) -> list[str]:
    return [str(m.email()["Subject"]) for m in sink.messages()]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_drain_hands_the_queue_to_the_relay_that_stays(
    relay_factory: Any, smtp_sink_factory: Any, workers: int
) -> None:
    sink = smtp_sink_factory()
    a_port, b_port = free_port(), free_port()
    a = relay_factory(_spec(a_port, closed_port()), args=["--workers", str(workers)])
    b = relay_factory(_spec(b_port, sink.port), args=["--workers", str(workers)], grace=30.0)
    b.admin_token_file.write_text(a.admin_token + "\n")  # one token per fleet, as the operator mounts it
    n = 30
    for i in range(n):
        _send(a_port, f"handoff-{i}")
    wait_for(lambda: sum(r["attempts"] for r in _rows(a)) == n, timeout=30)  # one failed attempt each
    before = {r["id"]: r for r in _rows(a)}
    assert len(before) == n

    assert _drain(a, b)["draining"] is True
    wait_for(lambda: _queued(a) == 0, timeout=60)
    wait_for(lambda: _rows(a) == [], timeout=10)  # the index follows the spool within its journal delay
    answer = _drain(a, b)
    assert answer["queue"]["total"] == 0 and answer["queue"]["handed_off_total"] == n
    assert a.metric("smtp_relay_handoff_sent_messages_total") == n

    wait_for(lambda: len(_rows(b)) == n, timeout=10)
    after = _rows(b)
    assert len(after) == n, "B holds every message (its next attempt is A's: an hour away)"
    assert b.metric("smtp_relay_handoff_received_messages_total") == n
    for row in after:
        origin_id = row["p"]["o"].rsplit("/", 1)[1]
        was = before[origin_id]
        assert row["received"] == was["received"] == was["env"]["received_at"], "original arrival time"
        assert row["attempts"] == was["attempts"] == 1, "attempt count carried over"
        assert row["env"]["rcpt_tos"] == was["env"]["rcpt_tos"] and row["env"]["mail_from"] == "app@example.com"
    assert b.terminate(timeout=60) == 0  # its SIGTERM drain retries everything now, and the sink is up
    assert sorted(_subjects(sink)) == sorted(f"handoff-{i}" for i in range(n))
    assert sum(len(m.recipients) for m in sink.messages()) == 2 * n


def test_kill_9_of_the_draining_relay_loses_nothing(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    a_port, b_port = free_port(), free_port()
    a = relay_factory(_spec(a_port, closed_port()))
    b = relay_factory(_spec(b_port, sink.port), grace=60.0)
    b.admin_token_file.write_text(a.admin_token + "\n")
    n = 300
    for i in range(n):
        _send(a_port, f"kill-{i}")
    wait_for(lambda: len(_rows(a)) == n, timeout=30)
    _drain(a, b)
    wait_for(lambda: b.metric("smtp_relay_handoff_received_messages_total") >= 40, timeout=60, interval=0.01)
    a.kill()  # in the middle of the hand-off: some copies B has are not yet finished on A
    taken = int(b.metric("smtp_relay_handoff_received_messages_total"))
    assert 40 <= taken < n, f"killed mid-way: B had taken {taken} of {n}"
    a.start()
    left = _queued(a)
    assert left >= n - taken, f"every message B does not hold is still on A ({left} recovered, B took {taken})"
    _drain(a, b)
    wait_for(lambda: _queued(a) == 0, timeout=60)
    duplicates = b.metric("smtp_relay_handoff_duplicates_total")
    assert b.terminate(timeout=90) == 0
    subjects = _subjects(sink)
    assert set(subjects) == {f"kill-{i}" for i in range(n)}, "every message that got a 250 arrives"
    print(
        f"kill -9 mid hand-off: {n} accepted, B had {taken}, A recovered {left}, {duplicates:.0f} duplicate"
        f" hand-off(s) caught by B, {len(subjects) - len(set(subjects))} duplicate deliveries"
    )


def _body(**changes: Any) -> bytes:
    data = b"Subject: x\r\n\r\nbody\r\n"
    envelope = Envelope("a@example.com", ("b@example.net",), received_at=1_700_000_000.0)
    raw = encode(StoredMessage("00000000000001", envelope, len(data), {"b@example.net"}), data, "test:/s/1")
    meta = json.loads(raw.split(b"\n", 1)[0])
    meta.update(changes)
    return json.dumps(meta).encode() + b"\n" + data


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_hand_offs_are_refused_with_the_reason(relay_factory: Any, workers: int) -> None:
    b = relay_factory(_spec(free_port(), closed_port()), args=["--workers", str(workers)])

    def post(body: bytes, token: str | None = "") -> tuple[int, str]:
        return b.http("/handoff", method="POST", body=body, token=token)

    assert post(_body(), token=None)[0] == 401
    assert post(_body(), token="wrong-token-wrong-token")[0] == 401
    for body, status, text in [
        (b"garbage", 400, "bad hand-off: the body must start with one line of JSON metadata"),
        (_body(rcpt_tos=[]), 400, "bad hand-off: rcpt_tos: at least one pending recipient is needed"),
        (_body(size=1), 400, "bad hand-off: size: the metadata declares 1 byte(s)"),
        (_body(sha256="0" * 64), 400, "bad hand-off: sha256: the data does not match"),
        (_body(received_at=4_000_000_000), 400, "bad hand-off: received_at: 4000000000 is in the future"),
    ]:
        got = post(body)
        assert got[0] == status and got[1].startswith(text), (body[:60], got)
    assert _queued(b) == 0, "nothing refused was queued"
    status, text = post(_body())
    assert status == 200 and json.loads(text)["duplicate"] is False, text
    status, text = post(_body())
    assert status == 200 and json.loads(text)["duplicate"] is True, "a retried hand-off is not queued twice"
    assert _queued(b) == 1
    assert b.metric("smtp_relay_handoff_duplicates_total") == 1
    status, text = b.http("/drain", method="POST")
    assert status == 200
    status, text = post(_body(origin="test:/s/2"))
    assert status == 503 and "draining" in text, "a draining relay takes no hand-off"
    status, text = b.http("/drain", method="POST", body=b'{"peers": ["nope"]}')
    assert status == 400 and "peers[0]: 'nope' is not an admin URL" in text
    assert CONTENT_TYPE == "application/x-relayfleet-handoff"


def test_a_peer_that_cannot_be_reached_leaves_the_mail_where_it_is(relay_factory: Any, tmp_path: Path) -> None:
    a_port = free_port()
    a = relay_factory(_spec(a_port, closed_port(), schedule="1s"))
    for i in range(3):
        _send(a_port, f"stay-{i}")
    answer = _drain(a, RelayProcess(tmp_path, tmp_path / "none.yaml", closed_port()))
    assert answer["handoff"]["running"] is True
    wait_for(lambda: a.queue()["handoff"]["failed"] >= 3, timeout=30)
    assert _queued(a) == 3, "nothing left A without a peer's 200"
    # the index is written lazily (0.2 s after a commit, off the 250's path): the three rows come, none goes
    wait_for(lambda: len(_rows(a)) == 3, timeout=10)
    assert a.metric("smtp_relay_handoff_failures_total", reason="unreachable") >= 3
    assert "unreachable" in a.queue()["handoff"]["last_error"]
    assert a.http("/undrain", method="POST")[0] == 200
    assert a.queue()["handoff"]["running"] is False
    assert _queued(a) == 3
