"""No mail lost when a fleet of real relays scales down or rolls, with mail flowing through the pods (issue 12)."""

from __future__ import annotations

import asyncio
import re

import pytest
from bench.fleet_load import LoadReport
from bench.peers.ports import free_port

from tests.e2e.fleet import MERGE, NAME, NAMESPACE, RELAYS, STS, Fleet, until
from tests.operator.handlers.test_e2e import ok

pytestmark = [pytest.mark.e2e, pytest.mark.peers, pytest.mark.slow]


async def test_scale_down_under_load_loses_nothing(fleet: Fleet) -> None:
    fleet.create(replicas=3)
    await fleet.settled(3)
    report = LoadReport()
    load = asyncio.create_task(fleet.load(400, report))
    await until(lambda: len(report.accepted) >= 60 or load.done())
    fleet.patch({"replicas": 1})
    await until(lambda: fleet.relay().get("status", {}).get("drain") or load.done(), seconds=20)
    await load
    await fleet.settled(1, seconds=90)

    account = await fleet.delivered(report)
    assert account.accepted == 400 and account.lost == [], account
    leaving = {pod for pod in report.accepted.values()}
    assert len(leaving) == 3, f"the load reached every pod before the scale-down: {leaving}"
    assert await fleet.stranded(range(1, 3)) == {"spool-outbound-1": 0, "spool-outbound-2": 0}
    stops = [e for e in fleet.kubelet.exits if e.stop_seconds is not None]
    assert sorted(e.pod for e in stops) == ["outbound-1", "outbound-2"]
    assert all(e.code == 0 and not e.killed for e in stops), stops
    print(f"scale 3 -> 1 under load: {account}, refused and retried: {dict(report.refused)}")

    # the claims outlive their pods (Retain) until the SmtpRelay goes with spec.queue.deleteClaimsOnDelete
    claims = [fleet.kubelet.claim_folder(NAMESPACE, f"spool-{NAME}-{i}") for i in range(3)]
    assert all(folder.is_dir() for folder in claims)
    fleet.patch({"queue": {"deleteClaimsOnDelete": True}})
    ok(fleet.emulator, "DELETE", f"{RELAYS}/{NAME}")
    await until(lambda: not any(folder.exists() for folder in claims), seconds=30)


async def test_scale_down_with_the_upstream_down_completes_by_hand_off(fleet: Fleet) -> None:
    """The leaving pods cannot deliver: they hand their queue to the pod that stays, so the StatefulSet shrinks
    without waiting for the upstream; once it is back, every message that got a 250 arrives."""
    report, held = await fleet.held_with_the_upstream_down(90)
    started = asyncio.get_running_loop().time()
    fleet.patch({"replicas": 1})
    await fleet.settled(1, seconds=90)
    took = asyncio.get_running_loop().time() - started
    assert not fleet.sink.running, "the upstream stayed down throughout the drain"
    assert await fleet.stranded(range(1, 3)) == {"spool-outbound-1": 0, "spool-outbound-2": 0}
    logs = fleet.relay_logs()
    handed = len(re.findall(r"message \w+ handed off to http://", logs))
    taken = len(re.findall(r"message \w+ taken over from ", logs))
    assert handed >= held[f"{NAME}-1"] + held[f"{NAME}-2"] and taken >= handed, (held, handed, taken)
    fleet.sink.start()
    account = await fleet.delivered(report)
    assert account.accepted == 90 and account.lost == [], account
    print(f"scale 3 -> 1, upstream down: drained by hand-off in {took:.1f} s ({handed} handed off), then {account}")


@pytest.mark.parametrize("termination_grace", [10])  # the relay drains for 8 s, 2 s kept for its last writes
async def test_rolling_update_under_load_with_the_upstream_down_loses_nothing(fleet: Fleet) -> None:
    """RollingUpdate relies on the persistent spool and the relay's SIGTERM drain: each replaced pod stops
    accepting, finishes its transactions, delivers what it can within its grace and leaves the rest in its
    claim; the new pod of the same ordinal mounts that claim and delivers it. With the upstream down during the
    rollout, every message is left on a claim and must be carried over."""
    fleet.create(replicas=3)
    await fleet.settled(3)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods()}
    revision = fleet.statefulset()["status"]["updateRevision"]
    fleet.sink.stop()  # every message accepted from now on waits in a spool
    report, stop = LoadReport(), asyncio.Event()
    load = asyncio.create_task(fleet.load(5000, report, rate=15, stop=stop))  # until the rollout is over
    await until(lambda: len(report.accepted) >= 30 or load.done())
    fleet.patch({"listeners": [{"name": "relay", "port": fleet.port}, {"name": "alt", "port": free_port()}]})
    await until(lambda: fleet.statefulset()["status"]["updateRevision"] != revision, seconds=30)
    await fleet.settled(3, seconds=180)
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods()}
    assert set(after) == set(before) and not set(after.values()) & set(before.values()), "every pod was replaced"
    assert not load.done(), "the load ran through the whole rollout"
    stop.set()
    await load
    assert report.refused, "clients met the stopping pods (421 or refused connections) and went elsewhere"

    logs = fleet.relay_logs()
    left = sum(int(n) for n in re.findall(r"shutdown: (\d+) message\(s\) left in the spool", logs))
    recovered = sum(int(n) for n in re.findall(r"recovered (\d+) message\(s\) from the spool", logs))
    assert left > 0 and recovered >= left, (left, recovered)
    fleet.sink.start()
    account = await fleet.delivered(report, seconds=90)
    assert account.accepted == len(report.accepted) > 100 and account.lost == [], account

    def emptied() -> bool:
        """status.queue: every pod reports, nothing queued (the operator's telemetry asks the relays)."""
        queue = fleet.relay()["status"].get("queue") or {}
        return bool(queue.get("podsReporting") == 3 and queue.get("depth") == 0 and queue["podsUnreachable"] == 0)

    await until(emptied, seconds=30)
    stops = [e for e in fleet.kubelet.exits if e.stop_seconds is not None]
    assert len(stops) == 3 and all(e.code == 0 and not e.killed for e in stops), stops
    took = [round(e.stop_seconds or 0, 1) for e in stops]
    print(f"rolling update under load, upstream down: {account}, {left} carried over on claims,"
          f" refused and retried: {dict(report.refused)}, stops took {took} s")  # fmt: skip


@pytest.mark.parametrize("termination_grace", [6])
async def test_a_statefulset_scaled_down_by_hand_gets_its_pods_and_their_mail_back(fleet: Fleet) -> None:
    """`kubectl scale sts --replicas=1` bypasses the drain: the StatefulSet controller stops two pods at once with
    mail queued (the upstream is down). Their claims are kept (Retain), the operator puts the replicas back, and
    the pods return on the same claims and deliver what they held."""
    report, held = await fleet.held_with_the_upstream_down(90)
    ok(fleet.emulator, "PATCH", STS, {"spec": {"replicas": 1}}, MERGE)
    await until(lambda: any(e.pod == f"{NAME}-2" and e.stop_seconds is not None for e in fleet.kubelet.exits))
    await fleet.settled(3, seconds=60)
    assert fleet.relay()["spec"]["replicas"] == 3
    logs = fleet.relay_logs()
    left = sum(int(n) for n in re.findall(r"shutdown: (\d+) message\(s\) left in the spool", logs))
    recovered = sum(int(n) for n in re.findall(r"recovered (\d+) message\(s\) from the spool", logs))
    assert left >= held[f"{NAME}-1"] + held[f"{NAME}-2"] and recovered >= left, (held, left, recovered)
    fleet.sink.start()
    account = await fleet.delivered(report)
    assert account.accepted == 90 and account.lost == [], account
