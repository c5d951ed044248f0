"""kopf wiring: each handler is a few lines that call `relays.reconcile`.

Loaded by `relayfleet-operator` (kopf run -m relay_operator.handlers), which registers every handler
on kopf's default registry on import. Settings come from the environment at that moment, because
timer intervals are fixed at registration. `wiring` holds kopf's startup settings, the login and the
API client per event loop; `relays` the SmtpRelay handlers; `children` the watches on their children.
Imports `relay_operator.relays`, `relay_operator.events`, `relay_operator.kube` and
`relay_operator.settings`; nothing imports this.
"""

from __future__ import annotations

import kopf

from relay_operator.fleet.observed import Observed
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers import children, domains, relays, wiring
from relay_operator.settings import Settings

SETTINGS = Settings.from_env()


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Register every handler on `registry` (kopf's default one on import; a test may use its own)."""
    telemetry = Telemetry(settings.telemetry_concurrency, settings.telemetry_timeout_seconds)
    observed = Observed()
    wiring.register(registry, [*children.watched_resources(settings), children.PODS])
    relays.register(registry, settings, telemetry, observed)
    children.register(registry, settings, telemetry, observed)
    domains.register(registry, settings, telemetry)


register(kopf.get_default_registry(), SETTINGS)
