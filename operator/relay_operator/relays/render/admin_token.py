"""The admin token of one SmtpRelay: a Secret the operator creates once and mounts into every relay pod.

The relays' admin API (queue details, drain, undrain, quarantine, hand-off) answers only this bearer
token. The operator generates it (it is not part of the spec, so nobody has to invent one), owns it
through an ownerReference (deleted with the SmtpRelay), never overwrites it (a pod mid-drain keeps the
token it has) and reads it back when it calls the relays itself. Deleting the Secret rotates the token:
the next reconcile creates a new one and the kubelet updates the mounted file in place, which the relay
rereads at each request.
"""

from __future__ import annotations

import base64
import secrets

from relay_operator.relays.render.common import Manifest, Owner, metadata

ADMIN_TOKEN_KEY = "token"
"""The Secret's data key holding the token."""
ADMIN_TOKEN_DIR = "/etc/relay/admin"
"""Where the pods mount it; the relay reads `ADMIN_TOKEN_DIR/ADMIN_TOKEN_KEY` (`--admin-token-file`)."""
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"


def admin_token_secret_name(owner: Owner) -> str:
    """The one place the Secret's name is computed (render, reconcile and the fleet's calls agree on it)."""
    return f"{owner.name}-admin-token"


def new_admin_token() -> str:
    """256 random bits, URL-safe: what `--admin-token-file` expects (at least 16 characters)."""
    return secrets.token_urlsafe(32)


def build_admin_token_secret(owner: Owner, token: str) -> Manifest:
    """Secret `<name>-admin-token` holding `token`; created once, never patched."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(owner, admin_token_secret_name(owner)),
        "data": {ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def read_admin_token(secret: Manifest) -> str | None:
    """The token from the Secret as read from the API; None when it holds none."""
    value = (secret.get("data") or {}).get(ADMIN_TOKEN_KEY)
    if not value:
        return None
    return base64.b64decode(value).decode().strip() or None
