"""DKIM signing (RFC 6376, RFC 8463): the last thing cleanup does to an accepted message.

A message is signed when the domain of its one header From address, or a parent of it, is a verified
SendingDomain with keys; with every key of that domain (RSA, and Ed25519 alongside it as RFC 8463 6
suggests), each a DKIM-Signature with d= the SendingDomain, relaxed/relaxed canonicalization and a t=
timestamp, over the headers `dkim_message` selects. A message already carrying a signature of ours
(same d= and s=) is not signed again with that key; signatures of others are kept.

dkimpy does the standard's text work: it parses the header section, canonicalizes the headers and
builds the header hash input (`hash_headers`: the selected fields bottom up, then this signature with
an empty b=). The digest is signed with `cryptography` (`dkim_keys`): dkimpy's own RSA is pure Python,
25 times slower. Two pieces are the relay's own, for measured reasons: the body canonicalization
(`dkim_message.relaxed_body`, dkimpy's costs more than the RSA signature) and the folding of the
signature, since `dkim.fold` may break a long token such as d= where RFC 6376 allows no white space.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import dkim

from smtp_relay.cleanup.dkim_keys import SigningKey, load_domain_keys
from smtp_relay.cleanup.dkim_message import (
    RELAXED,
    SIGNED,
    UnsignableError,
    header_from_domain,
    header_list,
    our_signatures,
    relaxed_body,
    split_message,
)
from smtp_relay.config.domains import SendingDomains
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

INLINE_BYTES: Final = 256 * 1024
"""Messages up to this size are signed on the event loop; bigger ones in a thread (hashing the body of
a large message would stall every other session), as the policy parses big messages."""
LINE: Final = 78
"""RFC 5322 2.1.1: lines should not exceed 78 characters."""
NOTEWORTHY: Final = frozenset({"malformed_header", "multiple_from", "unverified"})
"""Reasons for not signing that are logged at INFO (the others at DEBUG; all are counted)."""
_SIGNED_SET: Final = frozenset(SIGNED)


def signature_lines(tags: Sequence[tuple[str, str]]) -> list[str]:
    """``DKIM-Signature: tag=value; ...; b=`` folded within 78 characters, the b= value still empty.

    Lines break only between tags and before the colons of h= (RFC 6376 3.5 allows folding white
    space there); `with_b64` adds the signature without touching what came before, which was hashed.
    """
    pieces: list[str] = []
    for tag, value in tags:
        if tag == "h":
            first, *others = value.split(":")
            pieces += [f"h={first}", *(f":{name}" for name in others)]
            pieces[-1] += ";"
        else:
            pieces.append(f"{tag}={value};")
    lines = ["DKIM-Signature:"]
    for piece in [*pieces, "b="]:
        glue = "" if piece[0] == ":" else " "
        if len(lines[-1]) + len(glue) + len(piece) > LINE:
            lines.append("\t" + piece)
        else:
            lines[-1] += glue + piece
    return lines


def with_b64(lines: list[str], b64: str) -> str:
    """The folded field with the b= value, broken across lines (its base64 allows folding white space)."""
    out = lines[:]
    rest = b64
    while rest:
        room = LINE - len(out[-1])
        if room < 8:
            out.append("\t")
            continue
        out[-1] += rest[:room]
        rest = rest[room:]
    return "\r\n".join(out)


@dataclass(frozen=True)
class PendingSignature:
    """A signature whose header hash is computed: `digest` still has to be signed with `key`."""

    key: SigningKey
    lines: list[str]
    """The folded field up to the empty b= (as hashed)."""
    digest: bytes

    def field(self, signature: bytes) -> bytes:
        """The finished DKIM-Signature field, CRLF-terminated."""
        return (with_b64(self.lines, base64.b64encode(signature).decode("ascii")) + "\r\n").encode("ascii")


def prepare(
    headers: list[list[bytes]], body: bytes, keys: Sequence[SigningKey], *, now: float
) -> list[PendingSignature]:
    """The header hashes to sign for each of `keys` not already used on the message (`split_message`'s
    parts); UnsignableError when every key has signed it already. Pure CPU work, in Python."""
    present = our_signatures(headers)
    todo = [key for key in keys if (key.domain, key.selector) not in present]
    if not todo:
        raise UnsignableError("already_signed", "already carries our signature")
    names = header_list(headers)
    h_value = b":".join(names).decode("ascii")
    # only the fields h= may name are canonicalized: the selection among them is the same
    canonical_headers = RELAXED.canonicalize_headers([h for h in headers if h[0].lower() in _SIGNED_SET])
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
    pending: list[PendingSignature] = []
    for key in todo:
        lines = signature_lines(
            [
                ("v", "1"),
                ("a", key.algorithm),
                ("c", "relaxed/relaxed"),
                ("d", key.domain),
                ("s", key.selector),
                ("t", str(int(now))),
                ("h", h_value),
                ("bh", bh),
            ]
        )
        value = "\r\n".join(lines)[len("DKIM-Signature:") :].encode("ascii")
        hasher = hashlib.sha256()
        dkim.hash_headers(hasher, RELAXED, canonical_headers, names, (b"DKIM-Signature", value), None)
        pending.append(PendingSignature(key, lines, hasher.digest()))
    return pending


def sign(message: bytes, keys: Sequence[SigningKey], *, now: float) -> bytes:
    """The DKIM-Signature fields of `message` for `keys`, all on this thread (tests, tools); the relay
    uses `DkimSigner`. UnsignableError for a message that cannot carry a signature."""
    return b"".join(p.field(p.key.sign_digest(p.digest)) for p in prepare(*split_message(message), keys, now=now))


def _rsa_pool() -> ThreadPoolExecutor:
    """The threads RSA signatures are made in: OpenSSL releases the GIL, so the event loop goes on
    serving sessions meanwhile (0.67 ms per RSA-2048 signature on this machine's cores)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="dkim-rsa")
    return _POOL


_POOL: ThreadPoolExecutor | None = None


class DkimSigner:
    """The signer of one config: its keys are loaded once (DkimKeyError names a bad one)."""

    def __init__(self, domains: SendingDomains | None, metrics: RelayMetrics | None = None) -> None:
        self.domains = domains or SendingDomains()
        self.keys = load_domain_keys(domains)
        self.metrics = metrics or RelayMetrics()

    @property
    def active(self) -> bool:
        """Whether any domain has keys (without, signing never needs to look at a message)."""
        return bool(self.keys)

    def keys_for(self, domain: str) -> tuple[SigningKey, ...]:
        """The keys to sign with for a header From domain: those of its verified SendingDomain."""
        config = self.domains.for_address_domain(domain)
        if config is None:
            raise UnsignableError("no_sending_domain", f"From domain {domain} is no SendingDomain")
        if not config.verified:
            raise UnsignableError("unverified", f"SendingDomain {config.domain} is not verified")
        keys = self.keys.get(config.domain, ())
        if not keys:
            raise UnsignableError("no_keys", f"SendingDomain {config.domain} has no signing keys")
        return keys

    def pending(self, message: bytes, *, now: float) -> list[PendingSignature]:
        """What `message` is to be signed with (empty: not to be signed; counted and logged)."""
        try:
            headers, body = split_message(message)
            return prepare(headers, body, self.keys_for(header_from_domain(headers)), now=now)
        except UnsignableError as exc:
            self.metrics.dkim_unsigned.labels(reason=exc.reason).inc()
            log.log(logging.INFO if exc.reason in NOTEWORTHY else logging.DEBUG, "dkim: message not signed: %s", exc)
        except Exception:
            self.metrics.dkim_unsigned.labels(reason="error").inc()
            log.exception("dkim: signing failed, message sent unsigned")
        return []

    async def sign_message(self, message: bytes, *, now: float) -> bytes:
        """The message with its signatures prepended, or as it was when it is not to be signed.

        Never raises: a message whose signing fails is sent unsigned (logged, counted), since DMARC may
        still pass on SPF, while deferring it for a signing fault would hold back all of the domain's
        mail. Hashing runs on the event loop for small messages and in a thread for big ones; RSA
        signatures are made in `_rsa_pool`, Ed25519 ones (40 us) here.
        """
        if not self.active:
            return message
        if len(message) <= INLINE_BYTES:
            pending = self.pending(message, now=now)
        else:
            pending = await asyncio.to_thread(self.pending, message, now=now)
        if not pending:
            return message
        # RSA goes to the threads first; Ed25519 signs here meanwhile; no task is created per message
        loop = asyncio.get_running_loop()
        in_threads = {
            id(p): loop.run_in_executor(_rsa_pool(), p.key.sign_digest, p.digest)
            for p in pending
            if p.key.algorithm == "rsa-sha256"
        }
        results: list[bytes | BaseException] = []
        for p in pending:
            future = in_threads.get(id(p))
            try:
                results.append(p.key.sign_digest(p.digest) if future is None else await future)
            except Exception as exc:
                results.append(exc)
        fields = b""
        for p, result in zip(pending, results, strict=True):
            key = p.key
            if isinstance(result, bytes):
                fields += p.field(result)
                self.metrics.dkim_signed.labels(domain=key.domain, algorithm=key.algorithm).inc()
                continue
            self.metrics.dkim_failures.labels(domain=key.domain, algorithm=key.algorithm).inc()
            log.error("dkim: signing failed d=%s s=%s a=%s: %r", key.domain, key.selector, key.algorithm, result)
        if not fields:
            self.metrics.dkim_unsigned.labels(reason="error").inc()
        return fields + message
