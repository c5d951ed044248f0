"""relayfleet's Kubernetes operator: turns SmtpRelay resources into running relay fleets.

Layers, each importing only those after it: `handlers` (kopf wiring) -> `relays` (one package per
controller: reconcile does the I/O, validation, status and render are pure) -> `events` (Kubernetes
Events through kopf) and `kube` (the only module that talks to the Kubernetes API) -> `merge` (pure
patch computation) and `settings`. The spec models live in `smtp_relay.config.spec`, shared with
the relay itself. The CRDs are generated at build time by `crdgen`, outside this package.
"""
