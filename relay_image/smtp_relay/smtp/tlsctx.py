"""Server TLS contexts built from the PEM bytes of the resolved config.

`ssl.SSLContext.load_cert_chain` only reads files, so the PEM goes to a private temporary file that
lives only for the call. Contexts are cached by content: a config reload that keeps the same
certificate keeps the same context, and a renewed certificate gives new sessions a new one.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile

from smtp_relay.config.resolved import TlsMaterial

_cache: dict[bytes, ssl.SSLContext] = {}


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the certificate chain and key (cached by content)."""
    digest = hashlib.sha256(material.cert_pem + b"\0" + material.key_pem).digest()
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # SMTP clients rarely present certificates; asking would only break opportunistic TLS.
    context.verify_mode = ssl.CERT_NONE
    with tempfile.TemporaryDirectory(prefix="relay-tls-") as folder:
        os.chmod(folder, 0o700)
        cert_path = os.path.join(folder, "tls.crt")
        key_path = os.path.join(folder, "tls.key")
        for path, data in ((cert_path, material.cert_pem), (key_path, material.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)
    if len(_cache) > 8:
        _cache.clear()
    _cache[digest] = context
    return context
