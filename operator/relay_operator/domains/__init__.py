"""The SendingDomain controller: DKIM keys and their rotation, DNS verification in status.

`keys`, `rotation` and `status` are pure; `reconcile` does the I/O through `relay_operator.kube` and DNS through
`smtp_relay.dnscheck.observe` (the same checks `smtp-relay domains` runs). A sibling of `relays`: neither imports
the other; the handlers join them (a domain's verdict changing reconciles the SmtpRelays it names).
"""
