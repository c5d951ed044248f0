"""relayfleet's Kubernetes operator: turns SmtpRelay resources into running relay fleets.

Layers (see docs/design): handlers (kopf wiring) -> reconcile (I/O orchestration) -> render and
status (pure) -> kube (the only API client). The spec models live in `smtp_relay.spec`, shared
with the relay itself.
"""
