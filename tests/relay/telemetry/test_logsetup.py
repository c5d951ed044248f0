"""The relay's log handler: one write per event-loop pass, order kept, nothing left behind."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from smtp_relay.telemetry.logsetup import ATOMIC_WRITE, LoopPassHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, CountingStream]]:
    stream = CountingStream()
    handler = LoopPassHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.logsetup")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


async def test_info_lines_of_one_loop_pass_are_one_write(logged: tuple[logging.Logger, CountingStream]) -> None:
    logger, stream = logged
    for index in range(50):
        logger.info("queued %d", index)
    assert stream.writes == 0  # not yet: the pass is not over
    await asyncio.sleep(0)
    assert stream.writes == 1
    assert stream.getvalue().splitlines() == [f"INFO queued {i}" for i in range(50)]


async def test_warnings_write_at_once_after_the_pending_lines(logged: tuple[logging.Logger, CountingStream]) -> None:
    logger, stream = logged
    logger.info("first")
    logger.warning("second")
    assert stream.getvalue().splitlines() == ["INFO first", "WARNING second"]
    logger.info("third")
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines() == ["INFO first", "WARNING second", "INFO third"]


async def test_lines_from_another_thread_write_at_once(logged: tuple[logging.Logger, CountingStream]) -> None:
    logger, stream = logged
    logger.info("on the loop")
    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue().splitlines() == ["INFO on the loop", "INFO from a thread"]


def test_a_stopped_loop_does_not_hold_lines_back(logged: tuple[logging.Logger, CountingStream]) -> None:
    logger, stream = logged

    async def log_and_stop() -> None:
        logger.info("last line of the loop")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_stop())  # the loop stops before the write it scheduled runs
    loop.close()
    logger.info("after the loop")
    assert stream.getvalue().splitlines() == ["INFO last line of the loop", "INFO after the loop"]


async def test_a_long_pass_is_written_in_pipe_atomic_chunks(logged: tuple[logging.Logger, CountingStream]) -> None:
    """Worker processes share one stderr pipe: a write longer than PIPE_BUF could interleave mid-line."""
    logger, stream = logged
    chunks: list[str] = []
    original = stream.write
    stream.write = lambda text: chunks.append(text) or original(text)  # type: ignore[method-assign]
    for index in range(200):
        logger.info("delivered %03d %s", index, "x" * 100)
    await asyncio.sleep(0)
    assert len(chunks) > 1
    assert all(len(chunk.encode()) <= ATOMIC_WRITE and chunk.endswith("\n") for chunk in chunks)
    assert "".join(chunks).splitlines() == [f"INFO delivered {i:03d} {'x' * 100}" for i in range(200)]
