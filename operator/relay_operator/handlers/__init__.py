"""kopf wiring: each handler is a few lines that call `relays.reconcile`.

Loaded by `relayfleet-operator` (kopf run -m relay_operator.handlers), which registers every handler
on kopf's default registry on import. Settings come from the environment at that moment, because
timer intervals are fixed at registration. `wiring` holds kopf's startup settings, the login and the
API client per event loop; `relays` the SmtpRelay handlers; `children` the watches on their children;
`domains` the SendingDomain handlers; `observe` the operator's own metrics (every handler run counted and timed).
Imports `relay_operator.relays`, `relay_operator.events`, `relay_operator.kube` and
`relay_operator.settings`; nothing imports this.
"""

from __future__ import annotations

import kopf

from relay_operator.fleet.observed import Observed
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers import children, domains, observe, relays, wiring
from relay_operator.metrics import OperatorMetrics
from relay_operator.settings import Settings

SETTINGS = Settings.from_env()


def register(
    registry: kopf.OperatorRegistry, settings: Settings, *, serve_metrics: bool = False
) -> observe.MetricsEndpoint | None:
    """Register every handler on `registry` (kopf's default one on import; a test may use its own).

    Handler runs are always counted; `serve_metrics` also keeps the book of statuses and serves /metrics on
    settings.metrics_port (the endpoint is returned), which a test's registry does only when it asks."""
    telemetry = Telemetry(settings.telemetry_concurrency, settings.telemetry_timeout_seconds)
    observed = Observed()
    metrics = OperatorMetrics()
    wiring.register(registry, [*children.watched_resources(settings), children.PODS])
    relays.register(registry, settings, telemetry, observed, metrics)
    children.register(registry, settings, telemetry, observed)
    domains.register(registry, settings, telemetry, metrics)
    return observe.register(registry, settings, metrics) if serve_metrics else None


register(kopf.get_default_registry(), SETTINGS, serve_metrics=SETTINGS.metrics_enabled)
