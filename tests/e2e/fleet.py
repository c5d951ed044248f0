"""A relay fleet on the API emulator with real relays as its pods: the operator, the kubelet, the upstream.

Why: the fleet tests drive everything through the real API calls (the operator in its own thread, the
emulator's StatefulSet controller, `RelayKubelet` running `smtp-relay` per pod, a real smtp-sink upstream) and
then count, per Message-ID, what was accepted against what arrived.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from bench.fleet_load import Account, LoadReport, account, api_targets, send_load, stranded
from bench.peers.ports import free_port
from bench.peers.smtp_sink import SmtpSink

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator.settings import Settings
from tests.harness.relay_kubelet import RelayKubelet
from tests.operator.handlers.test_e2e import EmulatorApi, Operator, ok
from tests.peers.kube import KubeApi

T = TypeVar("T")
Json = dict[str, Any]
NAMESPACE, NAME = "default", "outbound"
RELAYS = f"/apis/relayfleet.io/v1alpha1/namespaces/{NAMESPACE}/smtprelays"
STS = f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{NAME}"
SELECTOR = f"app.kubernetes.io/instance={NAME}"
MERGE = "application/merge-patch+json"
TERMINATION_GRACE = 20
"""The pods' terminationGracePeriodSeconds in these tests (the relay's --grace is 16 s); a test may parametrize
`termination_grace` with another."""


async def until(check: Callable[[], T], seconds: float = 30.0, interval: float = 0.1) -> T:
    """Poll `check` without blocking the test's loop (the load generator runs on it)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {seconds}s: {check.__doc__ or check}")
        await asyncio.sleep(interval)


@dataclass
class Fleet:
    api: KubeApi
    emulator: EmulatorApi
    kubelet: RelayKubelet
    sink: SmtpSink
    port: int
    """The relay listener's port (each pod listens on it at its own address)."""

    def spec(self, replicas: int, **extra: Any) -> Json:
        return {
            "replicas": replicas,
            "listeners": [{"name": "relay", "port": self.port}],
            "clients": {"allowedNetworks": ["127.0.0.0/8"]},
            "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": self.sink.port, "tls": "none"}]}},
            "queue": {"retry": {"schedule": ["1s"]}, "drainTimeout": "2m"},
            **extra,
        }

    def create(self, replicas: int, **extra: Any) -> None:
        body = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": NAME}}
        ok(self.emulator, "POST", RELAYS, {**body, "spec": self.spec(replicas, **extra)})

    def patch(self, spec: Json) -> None:
        ok(self.emulator, "PATCH", f"{RELAYS}/{NAME}", {"spec": spec}, MERGE)

    def relay(self) -> Json:
        return ok(self.emulator, "GET", f"{RELAYS}/{NAME}")

    def statefulset(self) -> Json:
        code, body = self.emulator.call("GET", STS)
        return body if code == 200 else {"spec": {}}

    def pods(self) -> list[Json]:
        items: list[Json] = ok(self.emulator, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={SELECTOR}")[
            "items"
        ]
        return items

    def pod_ips(self) -> dict[str, str]:
        """Pod name -> its IP, of the pods the API lists now."""
        return {
            p["metadata"]["name"]: p["status"]["podIP"] for p in self.pods() if (p.get("status") or {}).get("podIP")
        }

    async def settled(self, replicas: int, seconds: float = 60.0) -> None:
        """The StatefulSet runs `replicas` pods of its update revision, all Ready, no other pod left."""

        def done() -> bool:
            sts, pods = self.statefulset(), self.pods()
            status = sts.get("status") or {}
            return (
                sts["spec"].get("replicas") == replicas
                and len(pods) == replicas
                and all(_ready(p) for p in pods)
                and status.get("updatedReplicas") == replicas
                and status.get("currentRevision") == status.get("updateRevision")
            )

        await until(done, seconds)

    async def load(
        self,
        total: int,
        report: LoadReport,
        concurrency: int = 6,
        rate: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> LoadReport:
        async with aiohttp.ClientSession() as session:
            targets = api_targets(session, self.api.url, self.api.token, NAMESPACE, SELECTOR, self.port)
            return await send_load(targets, total, concurrency=concurrency, rate=rate, report=report, stop=stop)

    async def held_with_the_upstream_down(self, total: int = 90) -> tuple[LoadReport, dict[str, int]]:
        """Three settled pods, the upstream stopped, `total` messages sent: (the load, messages per pod name); the
        pods that may leave (ordinals 1 and 2) both hold some, so a scale-down to 1 has mail to save."""
        self.create(replicas=3)
        await self.settled(3)
        self.sink.stop()
        report = LoadReport()
        await self.load(total, report)
        held = {name: sum(1 for pod in report.accepted.values() if pod == ip) for name, ip in self.pod_ips().items()}
        assert held[f"{NAME}-1"] and held[f"{NAME}-2"], held
        return report, held

    def delivered_ids(self) -> list[str]:
        return [str(m.email()["Message-ID"]) for m in self.sink.messages()]

    async def delivered(self, report: LoadReport, seconds: float = 60.0) -> Account:
        """Wait until every accepted message arrived (or `seconds` passed), then account per Message-ID."""
        await until(lambda: not account(report.accepted, self.delivered_ids()).lost, seconds, interval=0.5)
        return account(report.accepted, self.delivered_ids())

    def relay_logs(self) -> str:
        """Every container log of every pod this node ran (stopped ones too)."""
        return "".join(p.read_text() for p in sorted(self.kubelet.root.glob("pods/*/container.log")))

    async def stranded(self, ordinals: range) -> dict[str, int]:
        """Unfinished spool records in the claim folders of these ordinals."""
        found = {}
        for i in ordinals:
            claim = f"spool-{NAME}-{i}"
            found[claim] = await stranded(self.kubelet.claim_folder(NAMESPACE, claim))
        return found


def _ready(pod: Json) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and not pod["metadata"].get("deletionTimestamp")


@pytest.fixture
def termination_grace() -> int:
    return TERMINATION_GRACE


@pytest.fixture
def fleet(kube_api: KubeApi, smtp_sink_factory: Any, tmp_path: Path, termination_grace: int) -> Iterator[Fleet]:
    """The emulator with `RelayKubelet` as its node, the operator running, an smtp-sink as the upstream."""
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    kubelet = RelayKubelet(kube_api.url, kube_api.token, tmp_path / "node")
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", kubelet))
    sink = smtp_sink_factory()
    emulator = EmulatorApi(kube_api)
    settings = Settings(termination_grace_seconds=termination_grace, resync_seconds=2.0)
    try:
        with Operator(emulator, NAMESPACE, settings):
            yield Fleet(kube_api, emulator, kubelet, sink, free_port())
    finally:
        kubelet.close()
