"""No mail lost when a fleet of real relays scales down or rolls, with mail flowing through the pods (issue 12)."""

from __future__ import annotations

import asyncio

import pytest
from bench.fleet_load import LoadReport

from tests.e2e.fleet import Fleet, fleet, until  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.peers, pytest.mark.slow]


async def test_scale_down_under_load_loses_nothing(fleet: Fleet) -> None:  # noqa: F811
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
