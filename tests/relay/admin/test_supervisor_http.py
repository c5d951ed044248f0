"""The supervisor's admin port against fake workers (aiohttp servers answering as a relay's admin port)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from smtp_relay.admin.auth import AdminToken
from smtp_relay.admin.fleet import Worker
from smtp_relay.admin.supervisor_http import SupervisorAdmin
from smtp_relay.telemetry.metrics import RelayMetrics

TOKEN = "supervisor-test-token-0123456789"


@dataclass
class FakeWorker:
    """What one worker answers on /queue, /drain, /metrics and /quarantine, and what it was asked."""

    queue: dict[str, Any]
    ready: bool = True
    sessions: int = 0
    """SMTP sessions open, as a worker's /drain answers them."""
    drains: int = 0
    undrains: int = 0
    asked: list[str] = field(default_factory=list)
    drain_bodies: list[bytes] = field(default_factory=list)
    handoffs: list[bytes] = field(default_factory=list)
    handoff_status: int = 200
    """What POST /handoff answers (503: the worker refuses, as one that drains)."""
    authorizations: set[str] = field(default_factory=set)
    """Every Authorization header the supervisor sent (it must pass the admin token on)."""

    def app(self) -> web.Application:
        async def status(_request: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready and self.drains <= self.undrains, "queue": self.queue})

        async def drain(request: web.Request) -> web.Response:
            self.drains += 1
            self.drain_bodies.append(await request.read())
            return web.json_response({"draining": True, "queue": self.queue, "sessions": self.sessions})

        async def undrain(_request: web.Request) -> web.Response:
            self.undrains += 1
            return web.json_response({"draining": False, "queue": self.queue})

        @web.middleware
        async def record_auth(request: web.Request, handler: Any) -> web.StreamResponse:
            self.authorizations.add(request.headers.get("Authorization", ""))
            return await handler(request)  # type: ignore[no-any-return]

        async def metrics(_request: web.Request) -> web.Response:
            text = "# HELP smtp_relay_received_messages_total M.\n# TYPE smtp_relay_received_messages_total counter\n"
            return web.Response(text=text + f"smtp_relay_received_messages_total {self.queue['total']}.0\n")

        async def quarantine(request: web.Request) -> web.Response:
            self.asked.append(f"{request.method} {request.path_qs} {(await request.read()).decode()}")
            return web.json_response({"messages": []}, status=201)

        app = web.Application(middlewares=[record_auth])
        app.router.add_get("/queue", status)
        app.router.add_post("/drain", drain)
        app.router.add_post("/undrain", undrain)
        app.router.add_get("/metrics", metrics)
        app.router.add_route("*", "/quarantine/{tail:.*}", quarantine)

        async def handoff(request: web.Request) -> web.Response:
            self.handoffs.append(await request.read())
            if self.handoff_status != 200:
                return web.Response(status=self.handoff_status, text="hand-off refused: draining\n")
            return web.json_response({"id": f"ID{len(self.handoffs)}", "duplicate": False})

        app.router.add_post("/handoff", handoff)
        return app


@dataclass
class Fleet:
    fakes: list[FakeWorker]
    workers: list[Worker]
    admin: SupervisorAdmin
    stop: asyncio.Event
    """The supervisor's stop event: set once SIGTERM came."""

    async def get(
        self, path: str, method: str = "GET", body: bytes = b"", token: str | None = TOKEN
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"http://127.0.0.1:{self.admin.port}{path}", data=body, headers=headers) as reply,
        ):
            return reply.status, await reply.text()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    fakes = [
        FakeWorker({"active": 1, "deferred": 2, "oldest_deferred_age": 9.0, "total": 3}),
        FakeWorker({"active": 0, "deferred": 4, "oldest_deferred_age": 4.0, "total": 4}),
    ]
    servers = [TestServer(fake.app(), host="127.0.0.1") for fake in fakes]
    for server in servers:
        await server.start_server()
    workers = [Worker(str(i), tmp_path / f"worker-{i}", True, port=s.port) for i, s in enumerate(servers)]
    stop = asyncio.Event()
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token = AdminToken(token_file)
    admin = SupervisorAdmin(workers, RelayMetrics(), stop.is_set, token=token, host="127.0.0.1", port=0)
    await admin.start()
    yield Fleet(fakes, workers, admin, stop)
    await admin.close()
    for server in servers:
        await server.close()


async def test_queue_and_metrics_add_the_workers_up(fleet: Fleet) -> None:
    status, body = await fleet.get("/queue")
    assert status == 200
    answer = json.loads(body)
    assert answer["ready"] is True and answer["reason"] == ""
    assert answer["queue"] == {"active": 1, "deferred": 6, "oldest_deferred_age": 9.0, "total": 7}
    assert [(w["name"], w["ready"], w["queue"]["total"]) for w in answer["workers"]] == [("0", True, 3), ("1", True, 4)]
    status, text = await fleet.get("/metrics")
    assert status == 200
    assert "smtp_relay_received_messages_total 7.0" in text
    assert "smtp_relay_draining 0.0" in text  # the supervisor's own figures are merged in


async def test_readyz_names_the_worker_that_is_not_ready_or_down(fleet: Fleet) -> None:
    assert await fleet.get("/readyz") == (200, "ready\n")
    fleet.fakes[1].ready = False
    assert await fleet.get("/readyz") == (503, "not ready: worker(s) 1 not ready\n")
    fleet.fakes[1].ready = True
    fleet.workers[0].port = None  # restarting: it does not answer, its figures are missing
    assert await fleet.get("/readyz") == (503, "not ready: worker(s) 0 not ready\n")
    assert json.loads((await fleet.get("/queue"))[1])["queue"]["total"] == 4
    fleet.stop.set()
    assert await fleet.get("/readyz") == (503, "not ready: stopping\n")


async def test_drain_reaches_every_worker_and_one_started_later(fleet: Fleet) -> None:
    await fleet.admin.drain_if_draining(fleet.workers[0])
    assert fleet.fakes[0].drains == 0, "no drain before POST /drain"
    fleet.fakes[0].sessions, fleet.fakes[1].sessions = 2, 1
    status, body = await fleet.get("/drain", method="POST")
    assert status == 200
    queue = json.loads((await fleet.get("/queue"))[1])["queue"]
    expected = {"draining": True, "queue": queue, "sessions": 3, "handoff": {}}
    assert json.loads(body) == expected, "the workers' open sessions add up"
    assert [f.drains for f in fleet.fakes] == [1, 1]
    assert await fleet.get("/readyz") == (503, "not ready: draining\n")
    assert "smtp_relay_draining 1.0" in (await fleet.get("/metrics"))[1]
    await fleet.admin.drain_if_draining(fleet.workers[1])  # (re)started during the drain
    assert fleet.fakes[1].drains == 2


async def test_a_drain_names_the_workers_that_did_not_answer(fleet: Fleet) -> None:
    fleet.workers[1].port = None  # restarting: what its spool holds is not in the sum
    status, body = await fleet.get("/drain", method="POST")
    answer = json.loads(body)
    assert status == 200 and answer["queue"]["total"] == 3 and answer["unanswered"] == ["1"]
    fleet.workers[1].finished = True  # a deliver-only worker that emptied its spool and ended is not missing
    assert "unanswered" not in json.loads((await fleet.get("/drain", method="POST"))[1])


async def test_quarantine_goes_to_worker_0_and_is_503_while_it_is_down(fleet: Fleet) -> None:
    status, body = await fleet.get("/quarantine/abc/release?x=1", method="POST", body=b"yes")
    assert (status, json.loads(body)) == (201, {"messages": []})
    assert fleet.fakes[0].asked == ["POST /quarantine/abc/release?x=1 yes"]
    assert fleet.fakes[1].asked == []
    fleet.workers[0].port = None
    assert await fleet.get("/quarantine/abc") == (503, "worker 0 is not running, try again\n")


async def test_the_supervisor_checks_the_token_and_passes_it_to_its_workers(fleet: Fleet) -> None:
    for method, path in [("GET", "/queue"), ("POST", "/drain"), ("POST", "/undrain"), ("GET", "/quarantine/x")]:
        assert (await fleet.get(path, method=method, token=None))[0] == 401, path
        assert (await fleet.get(path, method=method, token="wrong-token-wrong-token"))[0] == 401, path
    assert [f.drains for f in fleet.fakes] == [0, 0], "a refused drain reached no worker"
    assert (await fleet.get("/readyz", token=None))[0] == 200
    assert (await fleet.get("/metrics", token=None))[0] == 200
    assert (await fleet.get("/queue"))[0] == 200
    assert all(f.authorizations == {f"Bearer {TOKEN}"} for f in fleet.fakes)


async def test_undrain_reaches_every_worker_and_readiness_returns(fleet: Fleet) -> None:
    assert (await fleet.get("/drain", method="POST"))[0] == 200
    assert await fleet.get("/readyz") == (503, "not ready: draining\n")
    assert (await fleet.get("/livez"))[1].startswith("ok: drained by POST /drain since ")
    status, body = await fleet.get("/undrain", method="POST")
    assert status == 200 and json.loads(body)["draining"] is False
    assert [f.undrains for f in fleet.fakes] == [1, 1]
    assert await fleet.get("/readyz") == (200, "ready\n")
    assert await fleet.get("/livez") == (200, "ok\n")
    assert "smtp_relay_draining 0.0" in (await fleet.get("/metrics"))[1]


async def test_drain_passes_the_peers_on_to_every_worker_and_to_one_started_later(fleet: Fleet) -> None:
    peers = b'{"peers": ["http://127.0.0.5:9025", "http://127.0.0.6:9025/"]}'
    status, body = await fleet.get("/drain", method="POST", body=peers)
    assert status == 200, body
    forwarded = json.loads(fleet.fakes[0].drain_bodies[0])
    assert forwarded == {"peers": ["http://127.0.0.5:9025", "http://127.0.0.6:9025"]}
    assert fleet.fakes[1].drain_bodies == fleet.fakes[0].drain_bodies
    assert (await fleet.get("/drain", method="POST"))[0] == 200  # a drain without a body keeps the peers
    assert json.loads(fleet.fakes[1].drain_bodies[1]) == forwarded
    await fleet.admin.drain_if_draining(fleet.workers[0])  # (re)started during the drain: it hands off too
    assert json.loads(fleet.fakes[0].drain_bodies[-1]) == forwarded
    status, body = await fleet.get("/drain", method="POST", body=b'{"peers": ["ftp://x"]}')
    assert status == 400 and "peers[0]: 'ftp://x' is not an admin URL" in body
    assert len(fleet.fakes[0].drain_bodies) == 3, "a refused drain body reached no worker"
    assert (await fleet.get("/undrain", method="POST"))[0] == 200
    assert (await fleet.get("/drain", method="POST"))[0] == 200
    assert fleet.fakes[0].drain_bodies[-1] == b"", "after an undrain, a drain names its peers anew"


def _handoff(origin: str) -> bytes:
    return json.dumps({"origin": origin}).encode() + b"\ndata"


async def test_handoff_goes_to_the_worker_of_its_origin_and_past_one_that_refuses(fleet: Fleet) -> None:
    origins = [f"relay-2:/spool/{i:014X}" for i in range(20)]
    for origin in origins + origins[:5]:
        status, body = await fleet.get("/handoff", method="POST", body=_handoff(origin))
        assert status == 200, body
    got = [[json.loads(b.split(b"\n")[0])["origin"] for b in f.handoffs] for f in fleet.fakes]
    assert got[0] and got[1], "origins spread over the listening workers"
    assert not set(got[0]) & set(got[1]), "a repeated origin meets the same worker (it knows the duplicate)"
    assert fleet.fakes[0].handoffs[0].endswith(b"\ndata"), "the body goes on unchanged"
    fleet.fakes[0].handoff_status = 503
    before = len(fleet.fakes[1].handoffs)
    for origin in got[0][:2]:
        assert (await fleet.get("/handoff", method="POST", body=_handoff(origin)))[0] == 200
    assert len(fleet.fakes[1].handoffs) == before + 2, "a refusing worker is passed over"
    fleet.fakes[1].handoff_status = 400
    status, body = await fleet.get("/handoff", method="POST", body=b"bad")
    assert (status, body) == (400, "hand-off refused: draining\n"), "a worker's refusal is answered as it is"
    assert (await fleet.get("/handoff", method="POST", body=b"x", token=None))[0] == 401
    assert (await fleet.get("/drain", method="POST"))[0] == 200
    status, body = await fleet.get("/handoff", method="POST", body=b"late")
    assert status == 503 and "draining" in body, "a draining pod takes no hand-off"
