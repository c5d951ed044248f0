"""Parsing of the human units used in manifests: durations (``90s``, ``5m``, ``4h``, ``5d``) and
Kubernetes quantities (``25Mi``, ``10Gi``, ``1M``).

Kept apart and pure so both the spec models and the CRD schema patterns share one definition.
"""

from __future__ import annotations

import re

DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d|w)$"
"""The duration syntax accepted everywhere: an integer and one unit."""

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
"""The subset of Kubernetes quantities that makes sense for byte sizes. Only suffixes Kubernetes accepts:
`K` is not one (resource.Quantity knows `k` and `Ki`), so a value valid here is valid in a PVC too."""

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_QUANTITY_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_DURATION_RE = re.compile(DURATION_PATTERN)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def parse_duration(text: str) -> float:
    """Return seconds for a duration such as ``5m``; raise ValueError with the accepted syntax."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and one of ms, s, m, h, d, w (e.g. 5m)")
    return int(text.strip()[: -len(match.group(1))]) * _DURATION_UNITS[match.group(1)]


def parse_quantity(text: str | int) -> int:
    """Return bytes for a quantity such as ``25Mi``; raise ValueError with the accepted syntax."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    match = _QUANTITY_RE.match(text.strip())
    if not match:
        suffixes = "Ki, Mi, Gi, Ti, k, M, G, T (Kubernetes quantities: not K)"
        raise ValueError(f"{text!r} is not a size: use a number with an optional suffix {suffixes}")
    suffix = match.group(2) or ""
    number = text.strip()[: len(text.strip()) - len(suffix)]
    return int(float(number) * _QUANTITY_UNITS[suffix])
