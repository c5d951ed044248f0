"""The SendingDomain handlers as kopf sees them: ids (kept in each domain's progress annotations), triggers,
the recheck timer's interval, and no finalizer (no deletion handler: the key Secrets go by ownerReference)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from relay_operator import handlers
from relay_operator.domains.status import check_due
from relay_operator.settings import Settings


def domains(found: list[Any]) -> list[Any]:
    return [h for h in found if h.selector is not None and h.selector.any_name == "sendingdomains"]


def test_handler_ids_and_triggers() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings(domain_recheck_seconds=30))
    changing = {(h.id, h.reason, h.initial) for h in domains(registry._changing.get_all_handlers())}
    assert changing == {
        ("register.<locals>.domain_changed", None, True),
        ("register.<locals>.domain_changed", kopf.Reason.CREATE, None),
        ("register.<locals>.domain_changed", kopf.Reason.UPDATE, None),
    }
    (timer,) = domains(registry._spawning.get_all_handlers())
    assert (timer.id, timer.interval) == ("register.<locals>.recheck", 30)
    (event,) = domains(registry._watching.get_all_handlers())
    assert event.id == "register.<locals>.domain_deleted"


def test_the_timer_checks_when_next_check_is_due() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert check_due(None, now, 30) and check_due({}, now, 30)
    assert check_due({"nextCheck": "2026-12-01T12:00:20Z"}, now, 30), "a tick a moment early still checks"
    assert not check_due({"nextCheck": "2026-12-01T12:10:00Z"}, now, 30), "backed off: not yet"
    assert check_due({"nextCheck": "2026-12-01T12:10:00Z"}, now + timedelta(minutes=10), 30)
