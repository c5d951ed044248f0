"""What makes a spec that passed the schema unable to run: pure checks, each a Problem naming the
field and the fix.

Pure: the Secrets come in as observed data (read by `reconcile`), so every message is unit-tested
without an API. Imports only `relays.render` and `smtp_relay.config`.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay_operator.relays.render.common import ADMIN_PORT, ADMIN_PORT_NAME, Owner
from relay_operator.relays.render.services import ServiceOptionError, service_options
from smtp_relay.config.manifest import ManifestError, parse_spec
from smtp_relay.config.secret_refs import SecretRef
from smtp_relay.config.spec import SmtpRelaySpec


@dataclass(frozen=True)
class Problem:
    """Why a spec cannot work: the field, what is wrong and how to fix it."""

    reason: str
    """CamelCase condition reason, e.g. SecretNotFound, InvalidSpec."""
    message: str
    """Names the field and the fix, e.g. `spec.tls.secretName: Secret 'x' not found; create it or ...`."""


def parse_or_problems(body: Mapping[str, Any]) -> tuple[SmtpRelaySpec | None, list[Problem]]:
    """The SmtpRelay's spec, or None and one InvalidSpec problem per line of the validation error.

    Memoized on the spec's JSON: every resync and status refresh of every relay parses its spec (about 5 ms of
    pydantic each, so a thousand relays spent a sixth of a core on it), while specs change only with their
    generation. The specs are frozen models, so the one parsed object can be shared."""
    try:
        key = json.dumps(body.get("spec"), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):  # not JSON (never from the API): parse it as it is
        return _parse(body.get("spec"))
    found = _PARSED.get(key)
    if found is None:
        found = _PARSED[key] = _parse(body.get("spec"))
        if len(_PARSED) > _PARSED_LIMIT:
            del _PARSED[next(iter(_PARSED))]
    else:
        _PARSED.move_to_end(key)
    return found[0], list(found[1])


def _parse(spec: Any) -> tuple[SmtpRelaySpec | None, list[Problem]]:
    try:
        return parse_spec(spec), []
    except ManifestError as exc:
        return None, [Problem("InvalidSpec", line) for line in exc.problems]


_PARSED: collections.OrderedDict[str, tuple[SmtpRelaySpec | None, list[Problem]]] = collections.OrderedDict()
"""The spec's canonical JSON -> what parsing it gave, the least recently used dropped first."""
_PARSED_LIMIT = 2048
"""About 10 KB a parsed spec: at most some 20 MB, and a fleet's relays mostly share a handful of specs."""


def secret_problems(
    refs: Sequence[SecretRef], namespace: str, secrets: Mapping[str, Mapping[str, Any] | None]
) -> list[Problem]:
    """Compare the references with the observed Secrets (name -> Secret body, None when absent)."""
    problems: list[Problem] = []
    for ref in refs:
        secret = secrets.get(ref.name)
        if secret is None:
            keys = ", ".join(ref.keys) or "one key per user"
            problems.append(
                Problem(
                    "SecretNotFound",
                    f"{ref.field}: Secret {ref.name!r} not found in namespace {namespace}; "
                    f"create it with {keys}, or point {ref.field} at an existing Secret",
                )
            )
            continue
        present = set((secret.get("data") or {}) | (secret.get("stringData") or {}))
        if ref.any_key and not present:
            problems.append(
                Problem("SecretKeyMissing", f"{ref.field}: Secret {ref.name!r} is empty; add one key per user")
            )
        missing = [k for k in ref.keys if k not in present]
        if missing:
            problems.append(
                Problem(
                    "SecretKeyMissing",
                    f"{ref.field}: Secret {ref.name!r} has no key {', '.join(missing)}; add it to the Secret",
                )
            )
    return problems


def spec_problems(owner: Owner, spec: SmtpRelaySpec) -> list[Problem]:
    """Checks the schema cannot do: clashes with the operator's own ports and annotations."""
    problems: list[Problem] = []
    for i, listener in enumerate(spec.listeners):
        if listener.port == ADMIN_PORT:
            problems.append(
                Problem(
                    "PortConflict",
                    f"spec.listeners[{i}].port: {ADMIN_PORT} is the relay's admin HTTP port; choose another port",
                )
            )
        if listener.name == ADMIN_PORT_NAME:
            problems.append(
                Problem(
                    "PortConflict",
                    f"spec.listeners[{i}].name: {ADMIN_PORT_NAME!r} names the relay's admin port; rename the listener",
                )
            )
    try:
        service_options(owner)
    except ServiceOptionError as exc:
        problems.append(Problem("InvalidAnnotation", f"metadata.annotations: {exc}"))
    return problems
