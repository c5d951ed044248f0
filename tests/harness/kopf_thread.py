"""kopf in its own thread and event loop, as the tests run every operator (kopf's own advice for tests)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf


class KopfThread:
    """Runs `kopf.operator` on `registry` in a daemon thread; a context manager that fails on a crash or a hang.

    `namespaces=None` watches the whole cluster. Subclasses register their handlers on `self.registry`.
    `peering` names the peering object to run in (kopf's --peering) with this `priority` and `identity`;
    without it the operator runs standalone.
    """

    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        *,
        namespaces: list[str] | None = None,
        ready_timeout: float = 15.0,
        stop_timeout: float = 20.0,
        peering: str | None = None,
        priority: int | None = None,
        identity: str | None = None,
    ) -> None:
        self.registry = registry
        self.namespaces = namespaces
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.peering = peering
        self.priority = priority
        self.identity = identity
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)

    def _run(self) -> None:
        scope: dict[str, Any] = (
            {"clusterwide": True} if self.namespaces is None else {"namespaces": list(self.namespaces)}
        )
        if self.peering is not None:
            scope.update(peering_name=self.peering, priority=self.priority, identity=self.identity)
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    standalone=self.peering is None,
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready_flag,
                    **scope,
                )
            )
        except BaseException as exc:  # reported by __exit__
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        assert self.ready_flag.wait(timeout=self.ready_timeout), "kopf did not get ready"

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=self.stop_timeout)
        assert not self.thread.is_alive(), "kopf did not stop"
        assert self.error is None, self.error


def fast_settings(settings: kopf.OperatorSettings, *, scanning: bool = False, peering: bool = False) -> None:
    """Settings for a test operator: no peering (unless `peering`), quick reconnects and quick worker exits."""
    settings.peering.standalone = not peering  # the peering CRD is registered only by the tests of peering
    settings.scanning.disabled = not scanning  # CRDs are registered before the start; no rescans needed
    settings.watching.reconnect_backoff = 0.05
    settings.queueing.idle_timeout = 0.5  # per-object workers exit fast, so the operator stops fast
    settings.queueing.exit_timeout = 0.5
