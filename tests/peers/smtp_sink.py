"""pytest fixtures for the smtp_sink peer of bench/peers/smtp_sink.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bench.peers.smtp_sink import SMTP_SINK, SinkBehaviour, SmtpSink

SinkFactory = Callable[..., SmtpSink]


def _require_binary() -> None:
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink is not installed (make peers)")


@pytest.fixture
def smtp_sink_factory() -> Iterator[SinkFactory]:
    """Start real smtp-sinks: `smtp_sink_factory(dump=True, behaviour=SinkBehaviour(...), port=None)`.

    Each returned SmtpSink is already listening; all are stopped and their folders removed at teardown.
    """
    _require_binary()
    sinks: list[SmtpSink] = []
    folders: list[str] = []

    def make(
        *, dump: bool = True, behaviour: SinkBehaviour | None = None, port: int | None = None, **knobs: object
    ) -> SmtpSink:
        """Knobs are SinkBehaviour fields given directly, e.g. smtp_sink_factory(soft_reject=["RCPT"])."""
        if knobs:
            behaviour = replace(behaviour or SinkBehaviour(), **knobs)  # type: ignore[arg-type]
        folder = tempfile.mkdtemp(prefix="smtp-sink-")
        folders.append(folder)
        sink = SmtpSink(Path(folder), port=port, dump=dump, behaviour=behaviour)
        sinks.append(sink)
        return sink.start()

    try:
        yield make
    finally:
        for sink in sinks:
            sink.stop()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def smtp_sink(smtp_sink_factory: SinkFactory) -> SmtpSink:
    """One accepting smtp-sink that dumps every message."""
    return smtp_sink_factory()
