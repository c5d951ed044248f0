"""Per-destination traffic shaping in `spec.routing`: the models only (the decisions are in delivery/shaper.py).

A destination is what the relay connects to for a route: a smarthost route is one destination (its smarthosts
are the egress path), a direct-MX route shapes each MX *site* of it, the set of MX hosts a domain resolves to,
as KumoMTA keys its sites. Large providers throttle by their MX infrastructure, not by the name in the address:
gmail.com, googlemail.com and every Google Workspace domain share one site and so one budget. The numbers
follow Postfix (`default_destination_concurrency_limit` 20, `smtp_connection_reuse_count_limit`,
`destination_rate_delay`) and KumoMTA (connection_limit, max_deliveries_per_connection, message throttles).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from smtp_relay.config.fields import Duration, SpecModel

BackoffDuration = Annotated[Duration, Field(max_length=16)]
"""A pause: `30s`, `10m` (bounded like every string of the CRD)."""


class AdaptiveSpec(SpecModel):
    """Back off when a destination defers (421, or a 4xx for the whole transaction), then slow-start back.

    The first deferral pauses the destination for initialBackoff; each further one before a success doubles
    the pause up to maxBackoff. After a pause the concurrency window restarts at 1 and grows by one per
    delivered transaction up to half of what it was (slow start), then by 1/window (congestion avoidance)
    until it reaches maxConnections again: the destination has recovered. Rates scale with the window.
    """

    enabled: bool = True
    """Off: 4xx replies are only retried on the retry schedule, the limits stay fixed."""
    initial_backoff: BackoffDuration = "30s"
    """Pause after the first deferral of a destination."""
    max_backoff: BackoffDuration = "10m"
    """Longest pause after repeated deferrals (every pause is capped by it, the first one too)."""


class ShapingSpec(SpecModel):
    """Limits of one destination (per MX site for mx routes). Mail over a limit waits in the queue, without
    counting as a failed attempt: it does not consume the retry schedule (it still bounces at maxAge)."""

    max_connections: Annotated[int, Field(ge=1, le=1000)] = 20
    """Simultaneous connections (transactions in flight) to the destination; 20 as Postfix's default. Per relay
    process, whatever spec.limits says."""
    max_messages_per_connection: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Transactions on one kept-open smarthost connection before it is closed (none: unlimited). Direct MX
    sessions carry one transaction each."""
    messages_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Transactions per minute, paced evenly (one every 60/N seconds: never more than N in any minute). With
    spec.limits.backend redis for the whole SmtpRelay (all pods and workers), else per relay process."""
    messages_per_hour: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    """Transactions per hour, paced evenly as messagesPerMinute."""
    adaptive: AdaptiveSpec = AdaptiveSpec()
    """Back-off on deferrals and slow start."""
