"""The quarantine's HTTP API on a real aiohttp server, releasing into the relay's real spool."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from smtp_relay.admin.quarantine_api import add_quarantine_routes
from smtp_relay.model.envelope import Envelope, StoredMessage
from smtp_relay.policy.quarantine import QuarantineStore
from smtp_relay.queue.spool.store import Spool

ENVELOPE = Envelope("alice@example.com", ("bob@example.net",), client_ip="192.0.2.1", helo="client.example")
DATA = b"Subject: held\r\n\r\nbody\r\n"


class Relay:
    """The store, the spool releases go to, and whether the spool is (made) unavailable."""

    def __init__(self, store: QuarantineStore, spool: Spool) -> None:
        self.store = store
        self.spool = spool
        self.broken = False
        self.spooled: list[StoredMessage] = []

    async def reinject(self, envelope: Envelope, data: bytes) -> str:
        if self.broken:
            raise OSError("spool disk full")
        message = await self.spool.commit(envelope, data)
        self.spooled.append(message)
        return message.id


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    spool = Spool(tmp_path / "queue")
    await spool.open()
    yield Relay(QuarantineStore(tmp_path / "quarantine"), spool)
    await spool.close()


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_quarantine_routes(app, relay.store, relay.reinject)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def test_list_release_and_delete(relay: Relay, client: TestClient[web.Request, web.Application]) -> None:
    held = relay.store.put(ENVELOPE, DATA, "virus: Eicar", ["554 5.7.1 Message rejected: virus found (Eicar)"])
    other = relay.store.put(ENVELOPE, b"other", "attachment: a.exe")

    response = await client.get("/quarantine")
    assert response.status == 200
    listed = (await response.json())["messages"]
    assert [(m["id"], m["reason"], m["envelope"]["mail_from"]) for m in listed] == [
        (held, "virus: Eicar", "alice@example.com"),
        (other, "attachment: a.exe", "alice@example.com"),
    ]
    assert (await (await client.get(f"/quarantine/{held}")).json())["verdicts"] == [
        "554 5.7.1 Message rejected: virus found (Eicar)"
    ]

    response = await client.post(f"/quarantine/{held}/release")
    assert response.status == 200
    body = await response.json()
    assert body["released"] is True
    [spooled] = relay.spooled
    assert spooled.id == body["queueId"]
    assert dataclasses.replace(spooled.envelope, received_at=0.0) == ENVELOPE
    assert await relay.spool.read(spooled) == DATA
    assert (await client.post(f"/quarantine/{held}/release")).status == 404  # released once only

    assert (await client.delete(f"/quarantine/{other}")).status == 200
    assert (await client.delete(f"/quarantine/{other}")).status == 404
    assert (await (await client.get("/quarantine")).json())["messages"] == []


async def test_a_failed_release_keeps_the_message(
    relay: Relay, client: TestClient[web.Request, web.Application]
) -> None:
    held = relay.store.put(ENVELOPE, DATA, "spam")
    relay.broken = True
    response = await client.post(f"/quarantine/{held}/release")
    assert response.status == 503
    assert "spool disk full" in await response.text()
    assert [e.id for e in relay.store.list()] == [held]
    relay.broken = False
    assert (await client.post(f"/quarantine/{held}/release")).status == 200


@pytest.mark.parametrize("entry_id", ["nope", "..%2F..%2Fetc%2Fpasswd"])
async def test_unknown_ids_are_404(client: TestClient[web.Request, web.Application], entry_id: str) -> None:
    assert (await client.get(f"/quarantine/{entry_id}")).status == 404
    assert (await client.post(f"/quarantine/{entry_id}/release")).status == 404
    assert (await client.delete(f"/quarantine/{entry_id}")).status == 404
