"""`spec.limits`: where the relay keeps its rate-limit and AUTH-throttle counters.

`local` keeps them in each relay process, as before: a limit holds per process, so N pods with W workers
each let N x W times the limit through. `redis` shares them between every pod and worker of the SmtpRelay
through one Redis, and falls back to local counters with each limit divided by replicas x workers while
Redis cannot be reached (the relay never stops accepting mail because of its limits backend).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from smtp_relay.config.fields import Duration, SecretName, SpecModel

MAX_ADDRESS_LENGTH = 259
"""A DNS name (253) or a bracketed IPv6 address, a colon and a port."""
ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):([0-9]{1,5})$"
_ADDRESS = re.compile(ADDRESS_PATTERN)


def _address(value: str) -> str:
    match = _ADDRESS.match(value)
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise PydanticCustomError("redis_address", "must be host:port (an IPv6 address in brackets), port 1-65535")
    return value


RedisAddress = Annotated[
    str, AfterValidator(_address), Field(max_length=MAX_ADDRESS_LENGTH, json_schema_extra={"pattern": ADDRESS_PATTERN})
]


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of a validated `host:port` (brackets of an IPv6 address removed)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class RedisSpec(SpecModel):
    """The Redis that holds the fleet's counters (one Redis may serve many SmtpRelays: keys carry namespace/name)."""

    address: RedisAddress
    """host:port of the Redis server, e.g. redis.mail.svc:6379."""
    secret_name: SecretName | None = None
    """Secret with key password and optionally username (a Redis 6 ACL user); none: no AUTH."""
    tls: bool = False
    """Connect with TLS (Redis 6 tls-port)."""
    ca_secret: SecretName | None = None
    """Secret with key ca.crt: the CA that signs the Redis server's certificate (default: system CAs). Needs tls."""
    timeout: Duration = "250ms"
    """How long a decision waits for Redis before it is taken locally: a hung Redis never stalls sessions."""

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> RedisSpec:
        if self.ca_secret is not None and not self.tls:
            raise PydanticCustomError("redis", "caSecret needs tls: true")
        return self


class LimitsSpec(SpecModel):
    """Where rate limits and the AUTH throttle count: per relay process, or fleet-wide in Redis."""

    backend: Literal["local", "redis"] = "local"
    """local: each relay process counts for itself; redis: every pod and worker of the SmtpRelay shares the counts."""
    redis: RedisSpec | None = None
    """The Redis server; required with backend redis."""

    @model_validator(mode="after")
    def _redis_given(self) -> LimitsSpec:
        if self.backend == "redis" and self.redis is None:
            raise PydanticCustomError("limits", "backend redis needs redis.address")
        return self
