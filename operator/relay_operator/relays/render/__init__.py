"""Pure rendering: an SmtpRelay's spec and metadata in, Kubernetes manifests (dicts) out.

Nothing here does I/O, so every builder is unit-tested with plain data and `reconcile` can compare
what it would write with what exists before writing anything. One module per kind of child
(`children.build_children` lists them all); `common` holds the names, labels and owner reference
they share. Imports only `relay_operator.settings` and `smtp_relay.config`; never aiohttp, kopf or
`relay_operator.kube`.
"""
