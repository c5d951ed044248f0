"""The `SmtpRelay` spec: the single contract shared by the relay and the operator.

The operator validates a custom resource with these models and renders it into the relay's config;
the relay parses the very same document. The CRD OpenAPI schema is generated from (and tested
against) these models, so the two cannot drift. Field names are camelCase on the wire (as in every
Kubernetes API) and snake_case in Python. The field types live in config/fields.py, the SendingDomain
spec in config/domain_spec.py, the filtering policy in config/policy_spec.py, spec.limits in config/limits_spec.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from smtp_relay.config.fields import (
    DNS_LABEL,
    MAX_NETWORKS,
    MAX_ROUTES,
    MAX_SMARTHOSTS,
    DnsSpec,
    DomainName,
    Duration,
    Network,
    Port,
    Quantity,
    SecretName,
    SpecModel,
)
from smtp_relay.config.limits_spec import LimitsSpec
from smtp_relay.config.policy_spec import PolicySpec
from smtp_relay.config.shaping_spec import ShapingSpec

API_GROUP = "relayfleet.io"
API_VERSION = "v1alpha1"

TlsMode = Literal["none", "starttls", "implicit"]
AuthMode = Literal["none", "optional", "required"]


class Listener(SpecModel):
    """One SMTP port of the relay; also one port of the Service."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=15)]
    """Port name (a DNS label of at most 15 characters), used for the Service and container port."""
    port: Port
    """TCP port the relay listens on: 25, 587, 465 or 2525 are usual."""
    tls: TlsMode = "none"
    """none: plain SMTP; starttls: offer STARTTLS; implicit: TLS from the first byte (SMTPS, port 465)."""
    require_tls: bool = Field(default=False, alias="requireTLS")
    """Refuse MAIL (and AUTH) until the session is encrypted. Needs tls starttls or implicit."""
    auth: AuthMode = "none"
    """none: no SMTP AUTH; optional: offered, allowedNetworks may still relay; required: every sender must log in."""
    allow_insecure_auth: bool = False
    """Offer AUTH before TLS. Only for trusted test networks: passwords travel in clear text."""

    @model_validator(mode="after")
    def _tls_consistency(self) -> Listener:
        if self.require_tls and self.tls == "none":
            raise PydanticCustomError("listener", "requireTLS needs tls: starttls or implicit")
        return self


class TlsSpec(SpecModel):
    """Server certificate for STARTTLS and implicit TLS listeners."""

    secret_name: SecretName
    """A kubernetes.io/tls Secret (tls.crt, tls.key), e.g. issued by cert-manager; reloaded when it changes."""


class UsersRef(SpecModel):
    """SMTP AUTH users."""

    secret_name: SecretName
    """Secret whose data maps each username to a password or a bcrypt hash ($2b$...)."""


class ClientsSpec(SpecModel):
    """Who may relay through the fleet."""

    allowed_networks: Annotated[list[Network], Field(max_length=MAX_NETWORKS)] = []
    """Client networks (CIDR) that may relay without AUTH. Empty: only authenticated users may relay."""
    users: UsersRef | None = None
    """SMTP AUTH users; needed by any listener with auth optional or required."""
    proxy_protocol: bool = False
    """Expect a PROXY protocol v1/v2 header from a load balancer, so policy sees the real client address."""
    max_connections_per_client: Annotated[int, Field(ge=1, le=65535)] = 50
    """Open SMTP connections one client address may hold (from accept to close); more are refused with 421."""
    max_connections_per_trusted_client: Annotated[int, Field(ge=1, le=65535)] = 500
    """The same limit for addresses in allowedNetworks: generous for the fleet's own applications, yet a bound."""


class SendersSpec(SpecModel):
    """Which envelope senders are accepted."""

    allowed_domains: list[DomainName] = []
    """MAIL FROM domains allowed; empty allows any domain."""
    require_verified_domain: bool = False
    """Only accept senders whose domain has a verified SendingDomain."""


class Smarthost(SpecModel):
    """An upstream server that takes all mail of a route."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    """Host name or IP address."""
    port: Port = 587
    """TCP port."""
    tls: TlsMode = "starttls"
    """none, starttls or implicit."""
    credentials_secret: SecretName | None = None
    """Secret with keys username and password for SMTP AUTH at the smarthost."""
    verify_tls: bool = Field(default=True, alias="verifyTLS")
    """Verify the smarthost's certificate."""
    ca_secret: SecretName | None = None
    """Secret with key ca.crt: the CA that signs the smarthost's certificate (default: system CAs)."""
    allow_insecure_auth: bool = False
    """Allow credentialsSecret with tls none. Only for test networks: the password travels in clear text."""

    @model_validator(mode="after")
    def _no_cleartext_credentials(self) -> Smarthost:
        if self.credentials_secret is not None and self.tls == "none" and not self.allow_insecure_auth:
            raise PydanticCustomError(
                "smarthost",
                "credentialsSecret with tls none would send the password in clear text:"
                " use tls starttls or implicit (or allowInsecureAuth: true, for test networks only)",
            )
        return self


class MxSpec(SpecModel):
    """Deliver straight to the recipient domain's MX hosts."""

    port: Port = 25
    """Port on the MX hosts (25 in production; tests use another)."""
    require_tls: bool = Field(default=False, alias="requireTLS")
    """Refuse to deliver when the MX does not offer STARTTLS."""


class CaptureSpec(SpecModel):
    """Keep mail in a local Maildir instead of delivering it (non-production)."""

    folder: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "capture"
    """Maildir folder name under the spool."""


class Destination(SpecModel):
    """Where a route sends mail: exactly one of smarthosts, mx or capture."""

    smarthosts: Annotated[list[Smarthost], Field(max_length=MAX_SMARTHOSTS)] | None = None
    """Upstream servers, tried in order (failover)."""
    mx: MxSpec | None = None
    """Direct delivery to the recipient domain's MX."""
    capture: CaptureSpec | None = None
    """Local Maildir capture."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        chosen = [n for n in ("smarthosts", "mx", "capture") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise PydanticCustomError(
                "destination",
                "exactly one of smarthosts, mx or capture must be set (got {got})",
                {"got": ", ".join(chosen) or "none"},
            )
        if self.smarthosts is not None and not self.smarthosts:
            raise PydanticCustomError("destination", "smarthosts must list at least one host")
        return self

    @property
    def kind(self) -> Literal["smarthosts", "mx", "capture"]:
        if self.smarthosts is not None:
            return "smarthosts"
        return "mx" if self.mx is not None else "capture"


class RouteMatch(SpecModel):
    """Which mail a route takes; all given lists must match (an empty match takes everything)."""

    recipient_domains: list[DomainName] = []
    """Recipient domains (a leading '.' is not needed: subdomains must be listed)."""
    sender_domains: list[DomainName] = []
    """Envelope sender domains."""


class Route(Destination):
    """A per-domain route; the first matching route wins, else routing.default."""

    match: RouteMatch
    """Which mail this route takes."""
    shaping: ShapingSpec | None = None
    """Traffic shaping of this route's destination (replaces routing.shaping); see config/shaping_spec.py."""


class RoutingSpec(SpecModel):
    """Upstream routing."""

    default: Destination = Destination(capture=CaptureSpec())
    """Where mail goes when no route matches."""
    routes: Annotated[list[Route], Field(max_length=MAX_ROUTES)] = []
    """Per-domain routes; first match wins."""
    shaping: ShapingSpec | None = None
    """Traffic shaping of routing.default and of every route without its own (none: unshaped)."""


class RetrySpec(SpecModel):
    """Retry schedule for temporary failures."""

    schedule: Annotated[list[Duration], Field(min_length=1)] = ["1m", "5m", "15m", "1h", "4h"]
    """Waits between attempts; after the last, the last interval repeats."""
    max_age: Duration = "5d"
    """After this, the message bounces to the sender."""


class QueueSpec(SpecModel):
    """Spool storage and retries."""

    storage: Quantity = "1Gi"
    """Size of the spool PersistentVolumeClaim of each pod: the queue survives restarts, rollouts and
    rescheduling, and a 250 is never lost with a pod."""
    ephemeral: bool = False
    """Keep the spool in an emptyDir instead of a PersistentVolumeClaim: a pod that is lost (node failure,
    eviction, deletion) loses the mail it had queued. For throwaway test fleets; the SmtpRelay then reports
    condition SpoolPersistent False."""
    drain_timeout: Duration = "1h"
    """How long a scale-down waits for the leaving pods to empty their spools before it reports DrainStuck (the
    pods are kept either way: never removed with mail in them)."""
    handoff: bool = True
    """While a scale-down drains the leaving pods, they hand their queued messages to the Ready pods that stay
    (envelope, original arrival time and attempts kept), so the drain does not wait for the upstream; false: the
    leaving pods deliver everything themselves."""
    backlog_age: Duration = "1h"
    """The SmtpRelay turns Degraded (reason QueueBacklog) while its oldest queued message is older than this."""
    storage_class_name: str = ""
    """StorageClass of the spool PVC; empty uses the cluster default."""
    retry: RetrySpec = RetrySpec()
    """Retry schedule."""
    active_window: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    """Most queued messages each relay process holds in memory (Postfix's qmgr_message_active_limit); the rest wait
    on disk, indexed by next attempt, so memory does not grow with the queue (about 2 KB per message in the window)."""
    delete_claims_on_delete: bool = False
    """Delete the spool PVCs when the SmtpRelay is deleted (default: keep them, they may hold mail)."""


class AutoscalingSpec(SpecModel):
    """Replicas from the queue: ceil(queue depth / targetQueuePerReplica), within min and max; scale-ups at once,
    scale-downs only to the highest recommendation of the last scaleDownStabilization (so a burst's tail does
    not flap), and every scale-down through the drain."""

    min_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Fewest relay pods."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 10
    """Most relay pods."""
    target_queue_per_replica: Annotated[int, Field(ge=1)] = 1000
    """Queued messages one pod should hold at most."""
    scale_down_stabilization: Duration = "5m"
    """How long a lower recommendation must hold before the fleet scales down."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise PydanticCustomError("autoscaling", "minReplicas must not be above maxReplicas")
        return self


class SmtpRelaySpec(SpecModel):
    """Desired state of an SMTP relay fleet."""

    replicas: Annotated[int, Field(ge=0, le=1000)] = 2
    """Number of relay pods (with spec.autoscaling, the operator sets it from the queue)."""
    autoscaling: AutoscalingSpec | None = None
    """Queue-aware autoscaling by the operator; any HorizontalPodAutoscaler on the scale subresource works too."""
    image: str = ""
    """Relay container image; empty uses the operator's default."""
    listeners: Annotated[list[Listener], Field(min_length=1, max_length=32)] = [Listener(name="smtp", port=2525)]
    """SMTP listeners; names and ports must be unique."""
    tls: TlsSpec | None = None
    """Server certificate; required by any TLS listener."""
    clients: ClientsSpec = ClientsSpec()
    """Who may relay."""
    senders: SendersSpec = SendersSpec()
    """Allowed senders."""
    policy: PolicySpec = PolicySpec()
    """Filtering policy."""
    routing: RoutingSpec = RoutingSpec()
    """Upstream routing."""
    dns: DnsSpec = DnsSpec()
    """Resolver for every DNS lookup."""
    queue: QueueSpec = QueueSpec()
    """Spool and retries."""
    limits: LimitsSpec = LimitsSpec()
    """Where rate limits and the AUTH throttle count: per process (local) or fleet-wide (redis)."""
    resources: dict[str, Any] = {}
    """Container resources (requests/limits) of the relay pods."""

    @model_validator(mode="after")
    def _cross_field(self) -> SmtpRelaySpec:
        names = [lst.name for lst in self.listeners]
        ports = [lst.port for lst in self.listeners]
        if len(set(names)) != len(names):
            raise PydanticCustomError("listeners", "listener names must be unique")
        if len(set(ports)) != len(ports):
            raise PydanticCustomError("listeners", "listener ports must be unique")
        if any(lst.tls != "none" for lst in self.listeners) and self.tls is None:
            raise PydanticCustomError("tls", "a listener uses TLS, so tls.secretName must name a certificate")
        if any(lst.auth != "none" for lst in self.listeners) and self.clients.users is None:
            raise PydanticCustomError("clients", "a listener uses AUTH, so clients.users must name a Secret")
        return self
