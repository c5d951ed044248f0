"""Authentication and RBAC authorization, as kube-apiserver does them, for the API emulator.

Why: an operator whose chart lacks a grant works against a forgiving emulator and fails on the user's first
install. Here every request is authenticated by its bearer token and, unless the identity is in
``system:masters``, authorized against the Role/ClusterRole/RoleBinding/ClusterRoleBinding objects stored in
the emulator, with the apiserver's request attributes (k8s.io/apiserver endpoints/request/requestinfo.go), its
rule matching (plugin/pkg/auth/authorizer/rbac) and its 403 message (endpoints/handlers/responsewriters/errors.go).
Every decision is recorded per identity (see ``tests/kube/audit.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kmock

from tests.kube.emulator import ApiError, Json

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

ADMIN = "kubernetes-admin"
RBAC = "rbac.authorization.k8s.io"
SPECIAL_VERBS = {"proxy", "watch"}  # the legacy /api/v1/watch/... and /proxy/... path prefixes
NAMESPACE_SUBRESOURCES = {"status", "finalize"}


@dataclass(frozen=True)
class Identity:
    """An authenticated user: what ``user.Info`` carries to the authorizer."""

    name: str
    groups: tuple[str, ...]

    @property
    def admin(self) -> bool:
        return "system:masters" in self.groups


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def service_account_identity(namespace: str, name: str) -> Identity:
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
    return Identity(service_account_user(namespace, name), groups)


@dataclass(frozen=True)
class Attributes:
    """The authorizer's view of one request (authorizer.Attributes), plus its decision."""

    user: str
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True

    @property
    def what(self) -> str:
        """``resource/subresource`` as RBAC rules and messages spell it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_attributes(user: str, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """RequestInfoFactory.NewRequestInfo: the verb, group, resource, subresource, namespace and name of a URL."""
    verb, parts = method.lower(), [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return Attributes(user, verb, path=path, resource_request=False)
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return Attributes(user, verb, path=path, resource_request=False)
        group, parts = parts[0], parts[1:]
    parts = parts[1:]  # the version
    by_prefix = parts[0] in SPECIAL_VERBS and len(parts) > 1
    if by_prefix:
        verb, parts = parts[0], parts[1:]
    else:
        verb = {"post": "create", "get": "get", "head": "get", "put": "update", "patch": "patch"}.get(
            verb, "delete" if verb == "delete" else ""
        )
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    sub = parts[2] if len(parts) >= 3 and verb != "proxy" else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "").lower() not in ("", "false", "0") else "list"
        exact = _exact_name(query.get("fieldSelector", ""))
        if exact:
            name = exact
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, group, resource, sub, namespace, name, path)


def _exact_name(selector: str) -> str:
    for term in selector.split(","):
        key, _, value = term.replace("==", "=").partition("=")
        if key.strip() == "metadata.name" and not key.endswith("!") and value.strip():
            return value.strip()
    return ""


# --- rule matching (rbac/v1 helpers: VerbMatches, APIGroupMatches, ResourceMatches, ...) -------------------


def rule_allows(rule: Json, attrs: Attributes) -> bool:
    """Whether one PolicyRule covers the request."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        urls = rule.get("nonResourceURLs") or []
        return any(u == "*" or u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1])) for u in urls)
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    resources = rule.get("resources") or []
    if not any(r == "*" or r == attrs.what or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def subject_applies(subject: Json, identity: Identity, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == identity.name)
    if kind == "Group":
        return name in identity.groups
    if kind == "ServiceAccount":
        return service_account_user(subject.get("namespace") or binding_namespace, str(name)) == identity.name
    return False


class Authorizer:
    """RBAC over the emulator's stored objects; bindings and roles are read at every request, as a lister would."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator

    def _objects(self, plural: str, namespace: str | None = None) -> list[Json]:
        res = kmock.resource(RBAC, "v1", plural)
        return [
            o for _, o in self.emulator._all(res) if namespace is None or o["metadata"].get("namespace") == namespace
        ]

    def _role_rules(self, ref: Json, namespace: str) -> tuple[list[Json], str | None]:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "ClusterRole":
            found = [o for o in self._objects("clusterroles") if o["metadata"]["name"] == name]
            if not found:
                return [], f'clusterrole.rbac.authorization.k8s.io "{name}" not found'
        else:
            found = [o for o in self._objects("roles", namespace) if o["metadata"]["name"] == name]
            if not found:
                return [], f'role.rbac.authorization.k8s.io "{name}" not found'
        return list(found[0].get("rules") or []), None

    def authorize(self, identity: Identity, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason): ClusterRoleBindings first, then the RoleBindings of the request's namespace."""
        if identity.admin:
            return True, ""
        errors: list[str] = []
        bindings = [(b, "") for b in self._objects("clusterrolebindings")]
        if attrs.namespace:
            bindings += [(b, attrs.namespace) for b in self._objects("rolebindings", attrs.namespace)]
        for binding, namespace in bindings:
            if not any(subject_applies(s, identity, namespace) for s in binding.get("subjects") or []):
                continue
            rules, error = self._role_rules(binding.get("roleRef") or {}, namespace)
            if error:
                errors.append(error)
            if any(rule_allows(rule, attrs) for rule in rules):
                return True, ""
        if not errors:
            return False, ""
        return False, "RBAC: " + (errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """responsewriters.ForbiddenStatusError: 403 with the apiserver's wording, details naming group and resource."""
    user = attrs.user
    if not attrs.resource_request:
        message = f'User "{user}" cannot {attrs.verb} path "{attrs.path}"'
    elif attrs.namespace:
        message = (
            f'User "{user}" cannot {attrs.verb} resource "{attrs.what}" in API group "{attrs.group}" '
            f'in the namespace "{attrs.namespace}"'
        )
    else:
        message = (
            f'User "{user}" cannot {attrs.verb} resource "{attrs.what}" in API group "{attrs.group}" '
            "at the cluster scope"
        )
    if reason:
        message = f"{message}: {reason}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    if not attrs.resource:
        text = f"forbidden: {message}"
    elif attrs.name:
        text = f'{qualified} "{attrs.name}" is forbidden: {message}'
    else:
        text = f"{qualified} is forbidden: {message}"
    details: dict[str, Any] = {"group": attrs.group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    return ApiError(status=403, reason="Forbidden", message=text, details=details)


def unauthorized() -> ApiError:
    return ApiError(status=401, reason="Unauthorized", message="Unauthorized")


class Tokens:
    """Bearer tokens -> identities: the admin token, plus ServiceAccount tokens minted by tests."""

    def __init__(self, emulator: KubeEmulator, admin_token: str) -> None:
        self.emulator = emulator
        self._tokens: dict[str, Identity | tuple[str, str]] = {admin_token: Identity(ADMIN, ("system:masters",))}

    def add_user(self, token: str, name: str, groups: Iterable[str] = ()) -> None:
        """A static-token user (like --token-auth-file), e.g. to test User and Group subjects."""
        self._tokens[token] = Identity(name, (*groups, "system:authenticated"))

    def mint(self, namespace: str, name: str) -> str:
        """A token for ``system:serviceaccount:<namespace>:<name>``; valid while that ServiceAccount exists."""
        token = f"sa.{namespace}.{name}.{secrets.token_hex(8)}"
        self._tokens[token] = (namespace, name)
        return token

    def authenticate(self, header: str) -> Identity | None:
        scheme, _, token = header.partition(" ")
        found = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if isinstance(found, tuple):
            namespace, name = found
            sa = self.emulator._get(kmock.resource("", "v1", "serviceaccounts"), namespace, name)
            if sa is None or sa["metadata"].get("deletionTimestamp"):
                return None  # the token authenticator looks the ServiceAccount up; a deleted one fails
            return service_account_identity(namespace, name)
        return found


def bootstrap_policy() -> list[tuple[str, Json]]:
    """The default ClusterRoles and bindings every authenticated identity gets (rbac bootstrappolicy)."""
    meta = {
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }
    public = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    roles: dict[str, list[Json]] = {
        "system:discovery": [
            {
                "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", *public],
                "verbs": ["get"],
            }
        ],
        "system:basic-user": [
            {
                "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"],
            },
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
        ],
        "system:public-info-viewer": [{"nonResourceURLs": public, "verbs": ["get"]}],
    }
    out: list[tuple[str, Json]] = []
    for name, rules in roles.items():
        out.append(("clusterroles", {"metadata": {"name": name, **meta}, "rules": rules}))
        binding = {
            "metadata": {"name": name, **meta},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "system:authenticated"}],
        }
        out.append(("clusterrolebindings", binding))
    return out
