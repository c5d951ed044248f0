"""DNS checks of a SendingDomain: the records it must publish (DKIM, SPF, DMARC, return path), what DNS
holds, and the verdict per record.

Shared by the operator's SendingDomain controller (status.records) and `smtp-relay domains` (a team's
check before it deploys), so both judge DNS the same way. The pure parts (`records`, `dkim_keys`,
`dmarc`, `verify`, `report`) do no I/O; `observe` asks DNS through the relay's one resolver.
"""
