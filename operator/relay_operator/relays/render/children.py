"""The full set of children of one SmtpRelay, in the order they are applied."""

from __future__ import annotations

from collections.abc import Sequence

from relay_operator.relays.render.common import Manifest, Owner
from relay_operator.relays.render.config import build_configmap
from relay_operator.relays.render.domains import RelayDomain, build_dkim_secret
from relay_operator.relays.render.extras import build_networkpolicy, build_pdb, build_servicemonitor
from relay_operator.relays.render.services import build_headless_service, build_service
from relay_operator.relays.render.statefulset import build_statefulset
from relay_operator.settings import Settings
from smtp_relay.config.spec import SmtpRelaySpec


def build_children(
    owner: Owner,
    spec: SmtpRelaySpec,
    settings: Settings,
    domains: Sequence[RelayDomain] = (),
    replicas: int | None = None,
) -> list[Manifest]:
    """Every child of one SmtpRelay, config (and its domains' keys) before pods; the optional ones as
    `settings` asks."""
    children = [
        build_configmap(owner, spec, domains),
        build_dkim_secret(owner, domains),
        build_headless_service(owner, spec),
        build_service(owner, spec),
        build_statefulset(owner, spec, settings, replicas),
        build_pdb(owner),
    ]
    if settings.service_monitor:
        children.append(build_servicemonitor(owner))
    if settings.network_policy:
        children.append(build_networkpolicy(owner, spec, settings))
    return children
