"""What each identity asked the emulator, and how that compares with a set of RBAC rules.

Why: a chart's RBAC should grant exactly what the operator uses. The emulator records every authorization
decision per identity (`Audit`); `rbac_diff` compares recorded requests with rules (e.g. from the chart
rendered by ``helm template``, see `bound_rules`) both ways: requests no rule allows are *missing* grants,
rule entries no request used are *unused* grants.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from typing import NamedTuple

from tests.kube.auth import Attributes, rule_allows, service_account_identity, subject_applies
from tests.kube.emulator import Json


class Grant(NamedTuple):
    """One (API group, resource[/subresource], verb); for non-resource URLs the group is "" and resource the URL."""

    group: str
    resource: str
    verb: str


class Audit:
    """Every authorized or refused request, counted by identity and attributes."""

    def __init__(self) -> None:
        self.decisions: collections.Counter[tuple[Attributes, bool]] = collections.Counter()

    def record(self, attrs: Attributes, allowed: bool) -> None:
        self.decisions[(attrs, allowed)] += 1

    def requests(self, user: str, allowed: bool | None = None) -> list[Attributes]:
        """The distinct requests of `user` (allowed ones, refused ones, or both with None), in first-seen order."""
        return [a for (a, ok), _ in self.decisions.items() if a.user == user and (allowed is None or ok == allowed)]

    def grants(self, user: str, allowed: bool | None = None) -> set[Grant]:
        return {grant_of(a) for a in self.requests(user, allowed)}

    def clear(self) -> None:
        self.decisions.clear()


def grant_of(attrs: Attributes) -> Grant:
    if not attrs.resource_request:
        return Grant("", attrs.path, attrs.verb)
    return Grant(attrs.group, attrs.what, attrs.verb)


def rbac_diff(requests: Iterable[Attributes], rules: Iterable[Json]) -> tuple[set[Grant], set[Grant]]:
    """(missing, unused): grants the requests needed that no rule gives, and rule entries no request used.

    Namespaces are not compared (a Role's rules count wherever it is bound); resourceNames are honoured.
    Each rule is split into one entry per (apiGroup, resource, verb), or (nonResourceURL, verb); a wildcard
    entry is used when any request matched it.
    """
    requests, rules = list(requests), list(rules)
    missing = {grant_of(a) for a in requests if not any(rule_allows(r, a) for r in rules)}
    unused: set[Grant] = set()
    for rule in rules:
        names = {"resourceNames": rule["resourceNames"]} if rule.get("resourceNames") else {}
        for url, verb in itertools.product(rule.get("nonResourceURLs") or [], rule.get("verbs") or []):
            entry = {"nonResourceURLs": [url], "verbs": [verb]}
            if not any(rule_allows(entry, a) for a in requests):
                unused.add(Grant("", url, verb))
        for group, resource, verb in itertools.product(
            rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        ):
            entry = {"apiGroups": [group], "resources": [resource], "verbs": [verb], **names}
            if not any(rule_allows(entry, a) for a in requests):
                unused.add(Grant(group, resource, verb))
    return missing, unused


def bound_rules(manifests: Iterable[Json], namespace: str, name: str) -> list[Json]:
    """The rules the given manifests (e.g. a rendered chart) grant to ServiceAccount `namespace`/`name`."""
    docs = [d for d in manifests if isinstance(d, dict)]
    identity = service_account_identity(namespace, name)
    roles = {
        (d["kind"], d["metadata"].get("namespace") or "", d["metadata"]["name"]): d
        for d in docs
        if d.get("kind") in ("Role", "ClusterRole")
    }
    rules: list[Json] = []
    for doc in docs:
        if doc.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        bns = (doc["metadata"].get("namespace") or "") if doc["kind"] == "RoleBinding" else ""
        if not any(subject_applies(s, identity, bns) for s in doc.get("subjects") or []):
            continue
        ref = doc.get("roleRef") or {}
        role = roles.get((ref.get("kind"), bns if ref.get("kind") == "Role" else "", ref.get("name")))
        if role is not None:
            rules += role.get("rules") or []
    return rules
