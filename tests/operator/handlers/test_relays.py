"""The SmtpRelay handlers as kopf sees them: their ids, their triggers and the resync interval.

kopf keeps a handler's id in the progress annotations of each SmtpRelay, so the ids are part of the
operator's contract with the objects it already handled: moving the code must not change them.
"""

from __future__ import annotations

from typing import Any

import kopf

from relay_operator import handlers
from relay_operator.settings import Settings


def relays(found: list[Any]) -> list[Any]:
    """The SmtpRelay handlers among all (the SendingDomain ones are tests/operator/handlers/test_domains.py's)."""
    return [h for h in found if h.selector is not None and h.selector.any_name == "smtprelays"]


def test_handler_ids_and_triggers() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings(resync_seconds=42))
    activities = {h.id: h.activity for h in registry._activities.get_all_handlers()}
    assert activities == {
        "configure": "startup",
        "login": "authentication",
        "close_clients": "cleanup",
        "cancel_pending_heals": "cleanup",
        "close_telemetry": "cleanup",
    }
    changing = {(h.id, h.reason, h.initial) for h in relays(registry._changing.get_all_handlers())}
    assert changing == {
        ("register.<locals>.relay_changed", None, True),  # kopf.on.resume: any object seen at startup
        ("register.<locals>.relay_changed", kopf.Reason.CREATE, None),
        ("register.<locals>.relay_changed", kopf.Reason.UPDATE, None),
        ("register.<locals>.relay_deleted", kopf.Reason.DELETE, None),
    }
    (timer,) = relays(registry._spawning.get_all_handlers())
    assert timer.id == "register.<locals>.resync"
    assert timer.interval == 42 and timer.initial_delay == 42
    own = {"register.<locals>.domain_deleted", "register.<locals>.relay_gone"}  # on the relayfleet.io kinds
    (relay_gone,) = [w for w in registry._watching.get_all_handlers() if w.id == "register.<locals>.relay_gone"]
    assert relay_gone.selector is not None and relay_gone.selector.any_name == "smtprelays"
    watches = [w for w in registry._watching.get_all_handlers() if w.id not in own]
    assert {w.id for w in watches} == {"register.<locals>.child_event", "register.<locals>.pod_event"}
    assert all(w.labels == {"app.kubernetes.io/managed-by": "relayfleet-operator"} for w in watches)
    kinds = {
        (w.id.rsplit(".", 1)[1], w.selector.group, w.selector.version, w.selector.any_name)
        for w in watches
        if w.selector is not None
    }
    assert kinds == {
        ("child_event", "", "v1", "configmaps"),
        ("child_event", "", "v1", "services"),
        ("child_event", "apps", "v1", "statefulsets"),
        ("child_event", "policy", "v1", "poddisruptionbudgets"),
        ("pod_event", "", "v1", "pods"),  # for the watch cache only: pods are never healed
    }


def test_optional_children_are_watched_when_rendered() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings(network_policy=True, service_monitor=True))
    kinds = {w.selector.any_name for w in registry._watching.get_all_handlers() if w.selector is not None}
    assert {"networkpolicies", "servicemonitors"} <= kinds


async def test_child_watches_are_label_selected_on_the_server() -> None:
    """kopf's startup settings carry the selector to every child watch (kopf passes it as labelSelector)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings())
    (startup,) = [h for h in registry._activities.get_all_handlers() if h.id == "configure"]
    settings = kopf.OperatorSettings()
    await startup.fn(settings=settings)
    selectors = dict(settings.watching.label_selectors.items())
    assert {s.any_name for s in selectors} == {
        "configmaps", "services", "statefulsets", "poddisruptionbudgets", "pods",
    }  # fmt: skip
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=relayfleet-operator"}


def test_only_relays_that_delete_their_claims_get_a_finalizer() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings())
    (deleted,) = [h for h in relays(registry._changing.get_all_handlers()) if h.reason == kopf.Reason.DELETE]
    assert deleted.when is not None
    assert deleted.when(spec={"queue": {"deleteClaimsOnDelete": True}}) is True
    assert deleted.when(spec={"queue": {}}) is False
    assert deleted.when(spec={}) is False
