"""The building blocks of the spec models: field types with their validators and CRD bounds, and `SpecModel`.

Shared by the `SmtpRelay` spec (config/spec.py) and the `SendingDomain` spec (config/domain_spec.py), so a
network, a duration or a nameserver is the same thing, with the same error and the same CRD schema, in both.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from smtp_relay.config.units import DURATION_PATTERN, QUANTITY_PATTERN, parse_duration, parse_quantity

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DOMAIN_PATTERN = (
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$"
)
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DOMAIN_RE = re.compile(DOMAIN_PATTERN)

# Bounds on every list and string a CEL rule of the CRD reaches: the apiserver estimates a rule's cost from the
# worst-case sizes the schema allows and refuses a CRD whose rules could cost too much (unbounded means 3 MiB).
MAX_NETWORK_LENGTH = 49
"""The longest IP network text: a full IPv6 address with an embedded IPv4 address (45) and /128."""
MAX_NAMESERVER_LENGTH = 53
"""The longest nameserver: an IPv6 address in brackets with :port, [45]:65535."""
MAX_NETWORKS = 256
"""allowedNetworks and egressIps: more networks than any fleet needs; aggregate prefixes beyond that."""
MAX_NAMESERVERS = 8
"""Resolvers tried in turn; glibc uses 3, so 8 is generous."""
MAX_ROUTES = 256
"""Per-domain routes of one SmtpRelay; each is matched in order for every message."""
MAX_SMARTHOSTS = 16
"""Failover upstreams of one route."""


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise PydanticCustomError("port_range", "must be between 1 and 65535")
    return value


def _duration(value: str) -> str:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", str(exc)) from None
    return value


def _quantity(value: str | int) -> str | int:
    try:
        parse_quantity(value)
    except ValueError as exc:
        raise PydanticCustomError("quantity", str(exc)) from None
    return value


def _domain(value: str) -> str:
    if not DOMAIN_RE.match(value):
        raise PydanticCustomError("domain", "'{value}' is not a domain name", {"value": value})
    return value.lower()


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise PydanticCustomError(
            "network", "'{value}' is not an IP network (use CIDR such as 10.0.0.0/8)", {"value": value}
        ) from None
    return value


Port = Annotated[int, AfterValidator(_port), Field(json_schema_extra={"minimum": 1, "maximum": 65535})]
Duration = Annotated[str, AfterValidator(_duration), Field(json_schema_extra={"pattern": DURATION_PATTERN})]
Quantity = Annotated[str | int, AfterValidator(_quantity), Field(json_schema_extra={"pattern": QUANTITY_PATTERN})]
DomainName = Annotated[str, AfterValidator(_domain), Field(json_schema_extra={"pattern": DOMAIN_PATTERN})]
Network = Annotated[str, AfterValidator(_network), Field(max_length=MAX_NETWORK_LENGTH)]
NAMESERVER_PATTERN = r"^(\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?|[0-9A-Fa-f:.]+)$"
"""The shape of a nameserver (`127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]:5353`); the address itself is
checked by `split_nameserver` here and by a CEL `isIP` in the CRD."""


def split_nameserver(item: str) -> tuple[str, int]:
    """`127.0.0.1`, `127.0.0.1:5353`, `::1` or `[::1]:5353` into (address, port); ValueError otherwise."""
    host, port = item, 53
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{item!r}: after ] only :port may follow")
            port = int(rest[1:])
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{item!r}: the port must be a number")
        port = int(port_text)
    ipaddress.ip_address(host)  # raises ValueError on anything but an address
    if not 1 <= port <= 65535:
        raise ValueError(f"{item!r}: the port must be between 1 and 65535")
    return host, port


Nameserver = Annotated[
    str, Field(min_length=1, max_length=MAX_NAMESERVER_LENGTH, json_schema_extra={"pattern": NAMESERVER_PATTERN})
]
SecretName = Annotated[str, Field(pattern=SECRET_NAME_PATTERN, max_length=253)]


OFF_ALIAS = "disabled"
"""Another name for "off" that no YAML reads as a boolean: YAML 1.1 turns an unquoted `off` into false, which the
apiserver refuses for a string field; `disabled` (or a quoted 'off') passes everywhere."""


def _off(value: object) -> object:
    return "off" if value is False or value == OFF_ALIAS else value


OFF_IS_FALSE = BeforeValidator(_off)
"""For an enum with "off": YAML's unquoted `off` (false, from a local file) and `disabled` are "off"."""


def off_enum(*values: str) -> Any:
    """The CRD side of such an enum: `disabled` is accepted beside the values."""
    return Field(json_schema_extra={"enum": [*values, OFF_ALIAS]})


class SpecModel(BaseModel):
    """Base for every spec object: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class DnsSpec(SpecModel):
    """The resolver used by every DNS lookup of the relay (MX, SPF, DNSBL, DKIM)."""

    nameservers: Annotated[list[Nameserver], Field(max_length=MAX_NAMESERVERS)] = []
    """Nameservers as host or host:port; empty uses the system resolver."""

    @field_validator("nameservers")
    @classmethod
    def _parse(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                split_nameserver(item)
            except ValueError:
                raise PydanticCustomError(
                    "nameserver", "'{v}' must be an IP address, optionally with :port", {"v": item}
                ) from None
        return value
