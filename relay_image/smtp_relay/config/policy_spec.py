"""The filtering policy of the `SmtpRelay` spec (`spec.policy`): IP authority, spam, viruses, attachments, rate
limits. Part of the one contract (see config/spec.py), kept apart because it is the largest concern of it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from smtp_relay.config.fields import OFF_IS_FALSE, DomainName, Duration, Quantity, SpecModel, off_enum
from smtp_relay.config.units import parse_quantity

# Enums with "off", which YAML 1.1 reads as false when unquoted (`spf: off`): a local file's false is "off", and
# `disabled` names it in a way no YAML misreads (the apiserver cannot take false for a string field).
SpfMode = Annotated[Literal["off", "tag", "reject"], OFF_IS_FALSE, off_enum("off", "tag", "reject")]
SpamEngine = Annotated[
    Literal["off", "builtin", "rspamd", "spamassassin"],
    OFF_IS_FALSE,
    off_enum("off", "builtin", "rspamd", "spamassassin"),
]
VirusEngine = Annotated[Literal["off", "clamd"], OFF_IS_FALSE, off_enum("off", "clamd")]


Action = Literal["tag", "reject"]


class DnsblSpec(SpecModel):
    """DNS blocklists queried with the client IP."""

    zones: list[DomainName] = []
    """Blocklist zones, e.g. zen.spamhaus.org."""
    action: Action = "reject"
    """tag: mark as spam; reject: refuse the connection's mail with 554."""


class IpAuthoritySpec(SpecModel):
    """Is the client IP allowed to send for the sender's domain?"""

    spf: SpfMode = "tag"
    """SPF check of the MAIL FROM domain (or HELO for the null sender) against the client IP."""
    dnsbl: DnsblSpec = DnsblSpec()
    """DNS blocklists."""


class SpamSpec(SpecModel):
    """Spam scoring."""

    engine: SpamEngine = "builtin"
    """off, builtin (fast local rules), rspamd (HTTP) or spamassassin (spamd)."""
    address: str = ""
    """host:port of rspamd or spamd; required for those engines."""
    tag_above: float = 5.0
    """Score above which the message is tagged (X-Spam-Flag) so the recipient files it as spam."""
    reject_above: float = 15.0
    """Score above which the message is refused at end of DATA with 550 5.7.1."""

    @model_validator(mode="after")
    def _engine_needs_address(self) -> SpamSpec:
        if self.engine in ("rspamd", "spamassassin") and not self.address:
            raise PydanticCustomError("spam", "address (host:port) is required for engine {e}", {"e": self.engine})
        if self.reject_above < self.tag_above:
            raise PydanticCustomError("spam", "rejectAbove must not be below tagAbove")
        return self


class VirusSpec(SpecModel):
    """Virus scanning."""

    engine: VirusEngine = "off"
    """off or clamd."""
    address: str = ""
    """clamd host:port; required for engine clamd."""
    action: Literal["reject", "quarantine"] = "reject"
    """What happens to infected mail."""
    on_scanner_error: Literal["defer", "accept"] = "defer"
    """When the scanner is down or slow: defer (451, the client retries) or accept unscanned."""

    @model_validator(mode="after")
    def _engine_needs_address(self) -> VirusSpec:
        if self.engine == "clamd" and not self.address:
            raise PydanticCustomError("virus", "address (host:port) is required for engine clamd")
        return self


MAX_BLOCK_EXTENSIONS = 512
"""Extensions one block list may name."""
GATEWAY_BLOCK_EXTENSIONS = frozenset(
    [
        # Windows executables, installers and libraries
        *("exe", "com", "scr", "pif", "cpl", "dll", "msi", "msp", "mst", "msc", "msix", "msixbundle"),
        *("appx", "appxbundle", "application", "gadget", "xll", "jar", "jnlp"),
        # scripts Windows runs on a double click
        *("bat", "cmd", "js", "jse", "vb", "vbs", "vbe", "wsf", "wsh", "wsc", "sct", "ps1", "hta", "reg", "inf", "scf"),
        # shortcuts, help files, and containers that mount or open as a folder
        *("lnk", "url", "chm", "iso", "img", "vhd", "vhdx", "one", "ade", "adp", "mde", "ins", "isp", "shb", "diagcab"),
    ]
)
"""The default block list: the types mail gateways refuse by default. Sources: Microsoft Defender for
Office 365's common attachments filter (hta, lnk, iso, img, msc, msix, xll, reg, scf, wsf, wsh, ...) and
Google Workspace's blocked file types (cpl, chm, vhd, appx, appxbundle, jse, ps1, msp, ...); .one
(OneNote) and .url after their use by Qakbot and other loaders in 2023."""


class AttachmentsSpec(SpecModel):
    """Attachment (malware) checks."""

    enabled: bool = True
    """Inspect attachments at all; turn off only where another scanner upstream does this job."""
    block_extensions: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,16}$")]], Field(max_length=MAX_BLOCK_EXTENSIONS)
    ] = sorted(GATEWAY_BLOCK_EXTENSIONS)
    """File name extensions refused, also inside archives and as the last of a double extension. The default
    is what mail gateways refuse by default (executables, scripts, shortcuts, disk images); a list written
    out replaces it, so a site can allow a type."""
    block_macros: bool = True
    """Refuse Office documents carrying macros."""
    inspect_archives: bool = True
    """Look inside archives (zip, tar, gzip, 7z, rar) for blocked names, executables and macros."""
    action: Literal["reject", "quarantine"] = "reject"
    """What happens to a message with a blocked attachment."""


class RateLimit(SpecModel):
    """One sliding-window rate limit."""

    key: Literal["client", "user", "sender", "senderDomain"]
    """What is counted: client IP, AUTH user, envelope sender, or sender domain."""
    limit: Annotated[int, Field(ge=1)]
    """Messages allowed per window."""
    per: Duration = "1m"
    """Window length."""


class PolicySpec(SpecModel):
    """Filtering policy: the checks and what each verdict does."""

    mode: Literal["enforce", "audit"] = "enforce"
    """enforce: act on verdicts; audit: decide, log and count, but accept."""
    max_message_size: Quantity = "25Mi"
    """Largest message accepted (SIZE extension); larger ones get 552."""
    max_recipients: Annotated[int, Field(ge=1, le=10000)] = 100
    """Recipients per message; more get 452."""
    ip_authority: IpAuthoritySpec = IpAuthoritySpec()
    """SPF and DNSBL checks of the client IP."""
    spam: SpamSpec = SpamSpec()
    """Spam scoring."""
    virus: VirusSpec = VirusSpec()
    """Virus scanning."""
    attachments: AttachmentsSpec = AttachmentsSpec()
    """Malware attachment checks."""
    rate_limits: list[RateLimit] = []
    """Sliding-window limits; over the limit gets 451 4.7.1."""

    @property
    def max_message_bytes(self) -> int:
        return parse_quantity(self.max_message_size)
