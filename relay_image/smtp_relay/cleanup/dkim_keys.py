"""The DKIM signing keys of a config, loaded once with `cryptography` and checked against their algorithm.

dkimpy signs RSA in pure Python (about 8 ms per RSA-2048 signature here, against 0.3 ms for
`cryptography`'s OpenSSL), and it wants Ed25519 keys as raw base64 seeds through PyNaCl; so the relay
loads each PEM key here, once per config (start and reload), and signs the header hash itself. A key
that cannot be used is an error at load time naming its domain and selector, as a bad TLS certificate
is: the relay refuses the config rather than find out at the first message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from smtp_relay.config.domains import DkimAlgorithm, DkimKey, SendingDomainConfig, SendingDomains

MIN_RSA_BITS: Final = 1024
"""RFC 8301 3.2: verifiers must not accept RSA keys below 1024 bits (and signers should use 2048)."""

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
"""RFC 6376 3.1: a selector is one or more DNS labels (it is published under <selector>._domainkey)."""

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ValueError):
    """A configured signing key that cannot be used; the message names the domain and the selector."""


@dataclass(frozen=True)
class SigningKey:
    """One loaded key: signs SHA-256 header hashes for d=`domain`, s=`selector`."""

    domain: str
    """The d= of its signatures: the SendingDomain, in A-labels."""
    selector: str
    algorithm: DkimAlgorithm
    key: PrivateKey = field(repr=False)

    def sign_digest(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1) or PureEdDSA over the
        digest (RFC 8463 3)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.key.sign(digest)


def load_key(domain: str, spec: DkimKey) -> SigningKey:
    """Load one PEM key (PKCS#1 or PKCS#8) and check it fits its algorithm; DkimKeyError otherwise."""
    where = f"SendingDomain {domain} selector {spec.selector!r}"
    if not _SELECTOR.match(spec.selector):
        raise DkimKeyError(f"{where}: not a valid DKIM selector (DNS labels of letters, digits, hyphens)")
    try:
        key = serialization.load_pem_private_key(spec.private_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # the library's text says what is wrong with the PEM (never the key material itself)
        raise DkimKeyError(f"{where}: private key is not a usable unencrypted PEM key: {exc}") from None
    if spec.algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"{where}: algorithm rsa-sha256 needs an RSA key, got {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{where}: RSA key has {key.key_size} bits, at least {MIN_RSA_BITS} are needed")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{where}: algorithm ed25519-sha256 needs an Ed25519 key, got {_kind(key)}")
    return SigningKey(domain=_a_labels(domain), selector=spec.selector.lower(), algorithm=spec.algorithm, key=key)


def load_domain_keys(domains: SendingDomains | None) -> dict[str, tuple[SigningKey, ...]]:
    """domain -> its loaded keys, for every SendingDomain that has keys (verified or not: the signer
    checks `verified` per message, so the verdict of a later status is one reload away)."""
    if domains is None:
        return {}
    loaded: dict[str, tuple[SigningKey, ...]] = {}
    for name, config in domains.by_domain.items():
        keys = _keys_of(config)
        if keys:
            loaded[name] = keys
    return loaded


def _keys_of(config: SendingDomainConfig) -> tuple[SigningKey, ...]:
    selectors = [(key.selector.lower(), key.algorithm) for key in config.keys]
    if len(set(selectors)) != len(selectors):
        raise DkimKeyError(f"SendingDomain {config.domain}: the same selector and algorithm appear twice")
    return tuple(load_key(config.domain, key) for key in config.keys)


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", " key")


def _a_labels(domain: str) -> str:
    """The domain as d= carries it: ASCII, internationalized labels as A-labels (RFC 6376 3.5)."""
    name = domain.lower().rstrip(".")
    return name if name.isascii() else name.encode("idna").decode("ascii")
