"""Which fields the operator owns, and the smallest JSON merge patch that restores them.

Pure. We own exactly what we render: a field absent from the rendered manifest (a label someone
added, a nodePort the apiserver assigned, an env var injected by a webhook) is never touched. So:
- `covers(desired, observed)`: every rendered field has the rendered value in the observed object
  (lists item by item, matched by `name` where items have one); when it holds, nothing is written.
- `merge_patch(desired, observed)`: the rendered fields that differ. A JSON merge patch can only
  replace a list whole, so each rendered list item is laid over its observed twin, which keeps the
  fields inside items that we do not render (defaults, injected values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
