"""Recipient checks at RCPT: is the address well formed, and can its domain receive mail at all?

Both are answered during the SMTP dialogue so the sending application gets the error synchronously
(501/550 with a readable reason) instead of a bounce hours later for a typo'd address or domain.
"""

from __future__ import annotations

import ipaddress
import re

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from smtp_relay.policy.util import reply_text
from smtp_relay.policy.verdict import Verdict, reject

# RFC 5321 4.1.2 / RFC 5322 3.2.3 atext; RFC 6531 adds any non-ASCII UTF-8 (SMTPUTF8).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_DOT_STRING_UTF8 = re.compile(rf"^{_ATEXT_UTF8}+(\.{_ATEXT_UTF8}+)*$")
_QUOTED = re.compile(r'^"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SOURCE_ROUTE = re.compile(r"^@[^:]+:")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


def recipient_syntax_error(address: str, *, smtputf8: bool = True) -> str | None:
    """Why `address` is not an RFC 5321 Mailbox (4.1.2), or None when it is one.

    A source route (@a,@b:user@domain) is ignored as RFC 5321 C requires; a bare "postmaster" is valid
    (4.5.1). Non-ASCII is only allowed with SMTPUTF8 (RFC 6531).
    """
    address = _SOURCE_ROUTE.sub("", address.strip())
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address:
        return "empty address"
    if len(address.encode()) > MAX_PATH - 2:
        return f"address longer than {MAX_PATH - 2} octets"
    if address.lower() == "postmaster":
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        return "no domain (user@domain expected)"
    if not local:
        return "empty local part"
    if len(local.encode()) > MAX_LOCAL_PART:
        return f"local part longer than {MAX_LOCAL_PART} octets"
    dot_string = _DOT_STRING_UTF8 if smtputf8 else _DOT_STRING
    if not (dot_string.match(local) or _QUOTED.match(local)):
        return "invalid local part"
    return _domain_error(domain, smtputf8=smtputf8)


def _domain_error(domain: str, *, smtputf8: bool) -> str | None:
    if not domain:
        return "empty domain"
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return "invalid address literal"
        return None
    if len(domain.encode()) > MAX_DOMAIN:
        return f"domain longer than {MAX_DOMAIN} octets"
    ascii_domain = domain
    if smtputf8 and not domain.isascii():
        try:
            ascii_domain = dns.name.from_unicode(domain).to_text(omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return "invalid internationalized domain"
    labels = ascii_domain.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return "invalid domain"
    return None


def recipient_syntax_verdict(address: str, *, smtputf8: bool = True) -> Verdict | None:
    """501 5.1.3 with the reason, as a sending application's library expects for a malformed address."""
    error = recipient_syntax_error(address, smtputf8=smtputf8)
    if error is None:
        return None
    return reject(501, "5.1.3", f"Bad recipient address syntax: {reply_text(error)}", "rcpt_syntax")


async def recipient_domain_exists(resolver: dns.asyncresolver.Resolver, domain: str) -> bool | None:
    """Can `domain` receive mail? True: a usable MX, or no MX but an A/AAAA (implicit MX, RFC 5321 5.1).

    False: NXDOMAIN, a null MX (RFC 7505), or neither MX nor address. None: no answer (timeout,
    SERVFAIL): the relay has no opinion and lets delivery find out later.
    """
    domain = domain.rstrip(".").lower()
    if domain.startswith("["):
        return True  # an address literal needs no DNS
    try:
        answer = await resolver.resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        return False
    except dns.resolver.NoAnswer:
        return await _has_address(resolver, domain)
    except dns.exception.DNSException:
        return None
    return any(isinstance(rr, MX) and rr.exchange != dns.name.root for rr in answer)


async def _has_address(resolver: dns.asyncresolver.Resolver, domain: str) -> bool | None:
    unknown = False
    for rdtype in ("A", "AAAA"):
        try:
            await resolver.resolve(domain, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException:
            unknown = True
            continue
        return True
    return None if unknown else False


def recipient_domain_verdict(domain: str, exists: bool | None) -> Verdict | None:
    """550 5.1.2 at RCPT for a domain that cannot receive mail; no opinion when DNS gave no answer."""
    if exists is not False:
        return None
    return reject(
        550,
        "5.1.2",
        f"Recipient address rejected: domain {reply_text(domain, 255)} does not accept mail (no MX or address record)",
        "rcpt_domain",
    )
