"""Which fields the operator owns, and the smallest JSON merge patch that restores them.

Pure. We own exactly what we render: a field absent from the rendered manifest (a label someone
added, a nodePort the apiserver assigned, an env var injected by a webhook) is never touched. So:
- `covers(desired, observed)`: every rendered field has the rendered value in the observed object
  (lists item by item, matched by `name` where items have one); when it holds, nothing is written.
- `merge_patch(desired, observed)`: the rendered fields that differ. A JSON merge patch can only
  replace a list whole, so each rendered list item is laid over its observed twin, which keeps the
  fields inside items that we do not render (defaults, injected values).
- `adopt_equal_quantities(desired, observed)`: the apiserver returns quantities canonical (`1024Mi` is
  read back as `1Gi`, `0.5` as `500m`); where the rendered and the observed quantity are the same amount,
  the observed spelling is taken, so an equal value is neither patched on every reconcile nor, in an
  immutable field, a reason to recreate the object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_SUFFIX_SCALE = {
    **{suffix: Decimal(1024) ** power for power, suffix in enumerate(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
    **{suffix: Decimal(10) ** exp for suffix, exp in [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6)]},
    **{suffix: Decimal(10) ** exp for suffix, exp in [("G", 9), ("T", 12), ("P", 15), ("E", 18)]},
}


def _key(item: Any) -> Any:
    return item.get("name") if isinstance(item, Mapping) else None


def _twins(desired: list[Any], observed: list[Any]) -> list[Any]:
    """The observed item for each desired item: same name if named, else same position."""
    by_name = {_key(o): o for o in observed if _key(o) is not None}
    twins = []
    for i, item in enumerate(desired):
        name = _key(item)
        if name is not None:
            twins.append(by_name.get(name))
        else:
            twins.append(observed[i] if i < len(observed) else None)
    return twins


def covers(desired: Any, observed: Any) -> bool:
    """True when `observed` already has every field of `desired` with the same value."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(key in observed and covers(value, observed[key]) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return False
        if [_key(d) for d in desired] != [_key(o) for o in observed]:
            return False
        return all(covers(d, o) for d, o in zip(desired, observed, strict=True))
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return desired == observed
    return bool(desired == observed)


def overlay(desired: Any, observed: Any) -> Any:
    """`desired` laid over `observed`: desired values win, observed-only fields are kept."""
    if isinstance(desired, Mapping) and isinstance(observed, Mapping):
        out = dict(observed)
        for key, value in desired.items():
            out[key] = overlay(value, observed.get(key))
        return out
    if isinstance(desired, list) and isinstance(observed, list):
        return [overlay(d, o) for d, o in zip(desired, _twins(desired, observed), strict=True)]
    return desired


def merge_patch(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch (RFC 7386) that makes `observed` cover `desired`; None when it already does."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        current = observed.get(key)
        if covers(value, current):
            continue
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            patch[key] = merge_patch(value, current)
        else:
            patch[key] = overlay(value, current)
    return patch or None


def quantity_amount(value: Any) -> Decimal | None:
    """The amount of a Kubernetes quantity (`1Gi`, `500m`, `1e3`, 2); None when `value` is not one."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * Decimal(10) ** int(suffix[1:])
        return Decimal(number) * _SUFFIX_SCALE[suffix]
    except (InvalidOperation, KeyError):
        return None


def adopt_equal_quantities(desired: Any, observed: Any, under_resources: bool = False) -> Any:
    """`desired` with each quantity under a `resources` key spelled as `observed` spells the same amount."""
    if isinstance(desired, Mapping) and isinstance(observed, Mapping):
        return {
            key: adopt_equal_quantities(value, observed.get(key), under_resources or key == "resources")
            for key, value in desired.items()
        }
    if isinstance(desired, list) and isinstance(observed, list):
        twins = _twins(desired, observed)
        return [adopt_equal_quantities(d, o, under_resources) for d, o in zip(desired, twins, strict=True)]
    if under_resources and desired != observed:
        amount = quantity_amount(desired)
        if amount is not None and amount == quantity_amount(observed):
            return observed
    return desired


def fingerprint(obj: Mapping[str, Any]) -> str | None:
    """What of an object a status update leaves alone: its generation (bumped by spec changes), labels and
    owners; None for kinds without a generation (every change of a ConfigMap or Service is a change)."""
    meta = obj.get("metadata") or {}
    if meta.get("generation") is None:
        return None
    mine = {k: meta.get(k) for k in ("generation", "labels", "ownerReferences")}
    return json.dumps(mine, sort_keys=True, separators=(",", ":"))
