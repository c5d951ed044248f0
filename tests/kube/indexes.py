"""Secondary indexes over the emulator's live objects, kept up to date by every store (an informer's indexers).

Why: the StatefulSet controller asks, per set and per sync, for the pods named ``<set>-<ordinal>`` and the
ControllerRevisions the set controls. Scanning every pod for that made one sync cost O(pods), so a fleet of
a thousand sets spent the emulator's core on scans. An index answers from the group of the key alone; it
holds the same objects as the store (no copies), and `KubeEmulator._store` moves an object between groups on
every ADDED, MODIFIED and DELETED, so a lookup can never see an object the store no longer has.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import kmock

Json = dict[str, Any]
ObjectKey = tuple[str | None, str]
"""(namespace, name) of a live object, as the store keys it."""
KeyFn = Callable[[Json], Hashable | None]
"""The group of an object (None: not in the index)."""


class Indexes:
    """Named indexes per resource: name -> (key function, key -> {(namespace, name): object})."""

    def __init__(self) -> None:
        self._by_res: dict[kmock.resource, dict[str, tuple[KeyFn, dict[Hashable, dict[ObjectKey, Json]]]]] = {}

    def ensure(self, res: kmock.resource, name: str, key: KeyFn, live: Iterable[tuple[ObjectKey, Json]]) -> None:
        """Create the index `name` of `res` from the `live` objects, unless it exists."""
        indexes = self._by_res.setdefault(res, {})
        if name in indexes:
            return
        groups: dict[Hashable, dict[ObjectKey, Json]] = {}
        for where, obj in live:
            group = key(obj)
            if group is not None:
                groups.setdefault(group, {})[where] = obj
        indexes[name] = (key, groups)

    def lookup(self, res: kmock.resource, name: str, group: Hashable) -> list[Json]:
        """The live objects in `group` (the stored bodies: copy before changing one)."""
        return list(self._by_res[res][name][1].get(group, {}).values())

    def moved(self, res: kmock.resource, where: ObjectKey, before: Json | None, after: Json | None) -> None:
        """The object at `where` changed from `before` to `after` (None: absent)."""
        for key, groups in (self._by_res.get(res) or {}).values():
            old = None if before is None else key(before)
            new = None if after is None else key(after)
            if old is not None and old != new:
                members = groups.get(old)
                if members is not None:
                    members.pop(where, None)
                    if not members:
                        del groups[old]
            if after is not None and new is not None:
                groups.setdefault(new, {})[where] = after  # same group: in place, so it keeps the store's order
