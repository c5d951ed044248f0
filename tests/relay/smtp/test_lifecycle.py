"""Drain, reload and metrics of the RelayServer: sessions in flight are never disturbed.

Durations are read on looptime's virtual clock: it only moves when the loop has nothing to do but
wait for a timer, so "returned before its timeout" and "waited for its timeout" are exact.
"""

from __future__ import annotations

import asyncio

import pytest
from bench.peers.ports import free_port

from tests.relay.smtp.conftest import RawClient, StartRelay, listeners, make_config

LOCAL = {"clients": {"allowedNetworks": ["127.0.0.0/8"]}}


async def _start_transaction(client: RawClient) -> None:
    await client.cmd("EHLO c")
    assert (await client.cmd("MAIL FROM:<a@example.org>"))[0] == 250
    assert (await client.cmd("RCPT TO:<b@example.org>"))[0] == 250


@pytest.mark.looptime
async def test_drain_refuses_new_work_and_lets_data_finish(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    in_data: RawClient = await connect(relay.port())
    idle: RawClient = await connect(relay.port())
    await _start_transaction(in_data)
    assert (await in_data.cmd("DATA"))[0] == 354
    await idle.cmd("EHLO c")
    assert relay.sample("smtp_relay_active_connections", listener="smtp") == 2

    relay.server.stop_accepting()
    assert relay.sample("smtp_relay_draining") == 1
    late: RawClient = await connect(relay.port(), greet=False)
    assert await late.reply() == (421, "4.3.2 Service shutting down")
    assert await late.closed()
    assert (await in_data.cmd(b"message in flight\r\n."))[0] == 250  # DATA in progress completes
    assert await in_data.cmd("MAIL FROM:<a@example.org>") == (421, "4.3.2 Service shutting down")
    assert await idle.cmd("MAIL FROM:<a@example.org>") == (421, "4.3.2 Service shutting down")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await relay.server.wait_idle(5)
    assert loop.time() - started < 4  # returned as the last session ended, not at its timeout
    assert relay.server.active_sessions() == 0
    assert relay.sample("smtp_relay_active_connections", listener="smtp") == 0
    assert len(relay.sink.messages) == 1


@pytest.mark.looptime
async def test_wait_idle_times_out_with_a_session_open(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    client: RawClient = await connect(relay.port())
    await client.cmd("EHLO c")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await relay.server.wait_idle(0.3)
    assert loop.time() - started == pytest.approx(0.3)  # it waited its whole timeout, and no longer
    assert relay.server.active_sessions() == 1


async def test_reload_changes_policy_for_new_sessions_only(start_relay: StartRelay, connect) -> None:
    spec = {**LOCAL, "listeners": listeners({"name": "smtp"}), "policy": {"maxRecipients": 5}}
    relay = await start_relay(spec)
    old: RawClient = await connect(relay.port())
    await _start_transaction(old)

    relay.server.update(make_config({**spec, "clients": {"allowedNetworks": ["10.0.0.0/8"]}}))
    new: RawClient = await connect(relay.port())
    await new.cmd("EHLO c")
    await new.cmd("MAIL FROM:<a@example.org>")
    assert (await new.cmd("RCPT TO:<b@example.org>"))[0] == 554  # the new config: 127.0.0.1 not allowed
    assert (await old.cmd("RCPT TO:<c@example.org>"))[0] == 250  # the old session keeps its config
    await old.cmd("DATA")
    assert (await old.cmd(b"still fine\r\n."))[0] == 250


async def test_reload_adds_moves_and_removes_listeners(start_relay: StartRelay, connect) -> None:
    spec = {**LOCAL, "listeners": listeners({"name": "smtp"}, {"name": "extra"})}
    relay = await start_relay(spec)
    first = relay.port("smtp")
    kept: RawClient = await connect(relay.port("extra"))
    await _start_transaction(kept)

    moved = free_port()
    added = free_port()
    relay.server.update(
        make_config(
            {
                **LOCAL,
                "listeners": [
                    {"name": "smtp", "port": moved},
                    {"name": "submission", "port": added},
                ],
            }
        )
    )
    assert relay.server.bound_ports() == {"smtp": moved, "submission": added}
    for port in (moved, added):
        client: RawClient = await connect(port)
        assert await client.cmd("NOOP") == (250, "2.0.0 Ok")
    for gone in (first, spec["listeners"][1]["port"]):  # type: ignore[index]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", gone)
        except ConnectionRefusedError:
            continue
        writer.close()
        raise AssertionError(f"port {gone} still accepts")
    await kept.cmd("DATA")  # the session on the removed listener finishes undisturbed
    assert (await kept.cmd(b"x\r\n."))[0] == 250
    assert len(relay.sink.messages) == 1


async def test_slow_sink_commit_survives_client_hangup(start_relay: StartRelay, connect) -> None:
    relay = await start_relay(LOCAL)
    relay.sink.gate = asyncio.Event()  # a slow disk: the commit waits until the test opens the gate
    client: RawClient = await connect(relay.port())
    await _start_transaction(client)
    await client.cmd("DATA")
    await client.send(b"hang up before the 250\r\n.\r\n")
    await asyncio.wait_for(relay.sink.committing.wait(), 5)
    await client.close()
    await relay.server.wait_idle(5)
    assert relay.server.active_sessions() == 0  # the session is gone while its commit is still under way
    relay.sink.gate.set()
    await asyncio.wait_for(relay.sink.stored.wait(), 5)
    assert len(relay.sink.messages) == 1  # the commit was not cut in half
