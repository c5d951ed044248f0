"""The relay's own Redis connection (policy/limits_wire.py) against a real redis-server: commands of one loop
pass share a write, replies resolve in order, error replies, AUTH, a lost or hung server, and reconnecting."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from bench.peers.redis import RedisServer

from smtp_relay.policy.limits_wire import RedisWire, ReplyError, WireLost, pack

pytestmark = pytest.mark.peers


def test_pack_is_a_resp_array_of_bulk_strings() -> None:
    assert pack(("SET", "k", 12, b"\x00v")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n\x00v\r\n"
    assert pack(("PING",)) == b"*1\r\n$4\r\nPING\r\n"


async def test_one_loop_pass_is_one_write_and_replies_come_in_order(redis_server: RedisServer) -> None:
    wire = RedisWire(redis_server.host, redis_server.port)
    try:
        assert await wire.call("PING") == b"PONG"
        writes = wire.writes
        replies = await asyncio.gather(*(wire.call("INCRBY", "n", i) for i in range(1, 101)))
        assert replies == [i * (i + 1) // 2 for i in range(1, 101)]  # each reply to its own command
        assert wire.writes - writes == 1  # pipelined without anyone collecting them
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await wire.call("LPUSH", "n", "x")
        assert await wire.call("GET", "n") == b"5050"  # an error reply leaves the connection usable
        assert await wire.call("EVAL", "return {1, ARGV[1]}", 0, "two") == [1, b"two"]
    finally:
        await wire.close()


async def test_auth_with_a_password_and_an_acl_user(redis_factory: Callable[..., RedisServer]) -> None:
    plain = redis_factory(password="pw-1")
    acl = redis_factory(username="relay", password="pw-2")
    good = [
        RedisWire(plain.host, plain.port, password="pw-1"),
        RedisWire(acl.host, acl.port, username="relay", password="pw-2"),
    ]
    bad = [RedisWire(plain.host, plain.port), RedisWire(acl.host, acl.port, username="relay", password="nope")]
    try:
        for wire in good:
            assert await wire.call("PING") == b"PONG"
        with pytest.raises(ReplyError, match="NOAUTH"):
            await bad[0].call("PING")
        with pytest.raises(ReplyError, match="WRONGPASS"):
            await bad[1].call("PING")
    finally:
        for wire in good + bad:
            await wire.close()


async def test_a_lost_server_fails_what_waits_and_the_next_call_reconnects(redis_server: RedisServer) -> None:
    wire = RedisWire(redis_server.host, redis_server.port)
    try:
        assert await wire.call("SET", "k", "v") == b"OK"
        assert redis_server._proc is not None
        os.kill(redis_server._proc.pid, signal.SIGSTOP)  # hung: the command waits for ever
        try:
            hung = asyncio.ensure_future(wire.call("GET", "k"))
            await asyncio.sleep(0.1)
            assert not hung.done()
            wire.drop()  # what a decision's timeout does
            with pytest.raises(WireLost):
                await hung
        finally:
            os.kill(redis_server._proc.pid, signal.SIGCONT)
        assert await wire.call("ECHO", "fresh") == b"fresh"  # its own reply, not the dropped GET's
        redis_server.kill()
        with pytest.raises(OSError):
            await wire.call("PING")
        redis_server.start()
        assert await wire.call("PING") == b"PONG"
    finally:
        await wire.close()


def test_the_relays_event_loop_uvloop(redis_server: RedisServer) -> None:
    """The relay runs on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def pipelined() -> list[object]:
        wire = RedisWire(redis_server.host, redis_server.port)
        try:
            return list(await asyncio.gather(*(wire.call("INCR", "u") for _ in range(10))))
        finally:
            await wire.close()

    assert uvloop.run(pipelined()) == list(range(1, 11))


async def test_a_closed_wire_does_not_connect_again(redis_server: RedisServer) -> None:
    """A retired connection (a reload replaced it) refuses later calls instead of opening a new one."""
    wire = RedisWire(redis_server.host, redis_server.port)
    assert await wire.call("PING") == b"PONG"
    await wire.close()
    with pytest.raises(WireLost):
        await wire.call("PING")
    assert len(redis_server.client().client_list()) == 1  # only the inspecting client
