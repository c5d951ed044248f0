"""pytest fixtures for the redis-server peer of bench/peers/redis.py (fleet-wide limits)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench.peers.redis import REDIS_SERVER, RedisServer, RedisTls

from tests.peers.daemon import skip_unless_installed

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_factory() -> Iterator[RedisFactory]:
    """Start real redis-servers: `redis_factory(password=None, username=None, tls=None)`, each on a free
    loopback port and already answering; all are stopped and their folders removed at teardown."""
    skip_unless_installed(REDIS_SERVER)
    servers: list[RedisServer] = []
    folders: list[str] = []

    def make(*, password: str | None = None, username: str | None = None, tls: RedisTls | None = None) -> RedisServer:
        folder = tempfile.mkdtemp(prefix="relayfleet-redis-")
        folders.append(folder)
        server = RedisServer(Path(folder), password=password, username=username, tls=tls)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """One redis-server without a password."""
    return redis_factory()
