"""The SmtpRelay controller: from an SmtpRelay resource to its children and its status.

`reconcile` is the I/O orchestration (observe, apply, write the status) and the only module here
that uses `relay_operator.kube`. `validation`, `status` and `render/` are pure: observed data in,
problems, status patches and manifests out; they import only each other, `relay_operator.settings`
and `smtp_relay.config`, never aiohttp, kopf, `relay_operator.kube` or a DNS client. Nothing here
imports `relay_operator.handlers`.
"""
