"""Key pairs shared by the dnscheck tests: generated once per session (RSA generation takes a while)."""

from __future__ import annotations

import functools

from smtp_relay.dnscheck.dkim_keys import generate_ed25519, generate_rsa


@functools.cache
def rsa_pem(index: int = 0) -> bytes:
    """A 1024-bit RSA key (the smallest DKIM allows: fast to make, and still a long TXT record)."""
    return generate_rsa(1024)


@functools.cache
def ed25519_pem(index: int = 0) -> bytes:
    return generate_ed25519()


@functools.cache
def rsa2048_pem() -> bytes:
    """A 2048-bit key: its record (about 410 bytes) is published as two TXT character-strings."""
    return generate_rsa(2048)
