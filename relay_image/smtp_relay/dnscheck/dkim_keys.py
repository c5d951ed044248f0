"""DKIM key pairs: generated with `cryptography`, loaded from PEM, and the public-key TXT record they need.

The operator generates a SendingDomain's keys and publishes their public halves in status; a team that
brings its own key names a Secret with `private.pem`. Both need the same record text, so it is computed
here: `v=DKIM1; k=rsa; p=<base64 DER SubjectPublicKeyInfo>` (RFC 6376 3.6.1) or `v=DKIM1; k=ed25519;
p=<base64 of the raw 32-byte key>` (RFC 8463 4.2).
"""

from __future__ import annotations

import base64
import string
from collections.abc import Collection
from datetime import datetime
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from smtp_relay.cleanup.dkim_keys import MIN_RSA_BITS

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyType = Literal["rsa", "ed25519"]
"""The k= of a DKIM key record."""

SELECTOR_PREFIX = "rf"


def generate_rsa(bits: int = 2048) -> bytes:
    """A new RSA private key as unencrypted PKCS#8 PEM (the form `private.pem` holds)."""
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA DKIM keys need at least {MIN_RSA_BITS} bits (RFC 8301 3.2), not {bits}")
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def generate_ed25519() -> bytes:
    """A new Ed25519 private key (RFC 8463) as unencrypted PKCS#8 PEM."""
    return _pem(ed25519.Ed25519PrivateKey.generate())


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes | str) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#1 or PKCS#8), RSA of at least 1024 bits or Ed25519.

    ValueError says what is wrong, never quoting the key material.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted; DKIM keys must be unencrypted PEM") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a usable PEM private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key has {key.key_size} bits; DKIM needs at least {MIN_RSA_BITS} (RFC 8301 3.2)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"a DKIM key must be RSA or Ed25519, not {_kind(key)}")


def _kind(key: object) -> str:
    kinds = {ec.EllipticCurvePrivateKey: "ECDSA", dsa.DSAPrivateKey: "DSA", ed448.Ed448PrivateKey: "Ed448"}
    found = next((name for cls, name in kinds.items() if isinstance(key, cls)), None)
    return found or type(key).__name__


def key_type(key: PrivateKey) -> KeyType:
    """The k= tag of the key's record."""
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"


def public_key_bytes(key: PrivateKey) -> bytes:
    """What p= carries, decoded: DER SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_txt(key: PrivateKey) -> str:
    """The TXT value to publish at `<selector>._domainkey.<domain>` for this key."""
    p = base64.b64encode(public_key_bytes(key)).decode("ascii")
    return f"v=DKIM1; k={key_type(key)}; p={p}"


def public_txt_from_pem(pem: bytes | str) -> str:
    """`public_txt` of a PEM private key (ValueError as `load_private_key`)."""
    return public_txt(load_private_key(pem))


def new_selector(now: datetime, taken: Collection[str] = ()) -> str:
    """A fresh selector for a key made at `now`: `rf<YYYYMM><letter>`, e.g. `rf202612a`.

    The month tells an operator at a glance how old a published key is; the letter tells apart the keys
    of one month (a rotation forced by annotation, the Ed25519 key beside the RSA one). `taken` are the
    selectors already in use (compared without case, as DNS does).
    """
    used = {s.lower() for s in taken}
    stem = f"{SELECTOR_PREFIX}{now.year:04d}{now.month:02d}"
    for letter in string.ascii_lowercase:
        if stem + letter not in used:
            return stem + letter
    for first in string.ascii_lowercase:
        for second in string.ascii_lowercase:
            if stem + first + second not in used:
                return stem + first + second
    raise ValueError(f"no free selector left for {stem}")
