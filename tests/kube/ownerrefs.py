"""The OwnerReferencesPermissionEnforcement admission plugin (plugin/pkg/admission/gc), switchable.

Why: clusters that enable it (OpenShift does; vanilla kube-apiserver does not by default, hence
``KubeEmulator.owner_references_permission_enforcement`` defaults to False) refuse an operator that sets
ownerReferences on objects it may not delete, or ``blockOwnerDeletion`` on owners whose ``finalizers``
subresource it may not update. Both checks are authorized like any request, so they are recorded in the
audit too: an RBAC comparison then sees the ``<owner>/finalizers`` grants the chart gives for this.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.kube.auth import Attributes, Identity
from tests.kube.emulator import ApiError

if TYPE_CHECKING:
    from tests.kube.control import Control

Json = dict[str, Any]


def _refs(doc: Any) -> list[Json] | None:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    refs = meta.get("ownerReferences") if isinstance(meta, dict) else None
    return [r for r in refs if isinstance(r, dict)] if isinstance(refs, list) else None


def check(control: Control, identity: Identity, attrs: Attributes, body: bytes) -> None:
    """Raise 403 as the plugin does; a no-op for verbs other than create/update/patch or without refs."""
    if attrs.verb not in ("create", "update", "patch") or attrs.subresource or identity.admin:
        return
    try:
        new = _refs(json.loads(body or b"{}"))
    except ValueError:
        return
    if new is None:
        return
    name = attrs.name or str(json.loads(body).get("metadata", {}).get("name") or "")
    old: list[Json] = []
    if attrs.verb != "create":
        res = next((r for r in control.emulator._extras if r.group == attrs.group and r.plural == attrs.resource), None)
        stored = control.emulator._get(res, attrs.namespace or None, attrs.name) if res is not None else None
        old = _refs(stored) or []
    if [json.dumps(r, sort_keys=True) for r in new] == [json.dumps(r, sort_keys=True) for r in old]:
        return
    qualified = Attributes(identity.name, "delete", attrs.group, attrs.resource, "", attrs.namespace, attrs.name)
    allowed, reason = control.authorizer.authorize(identity, qualified)
    control.audit.record(qualified, allowed)
    if not allowed:
        detail = f"cannot set an ownerRef on a resource you can't delete: {reason}, <nil>"
        raise _refused(attrs, name, detail)
    blocking_before = {r.get("uid") for r in old if r.get("blockOwnerDeletion")}
    for ref in new:
        if not ref.get("blockOwnerDeletion") or ref.get("uid") in blocking_before:
            continue
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        owner = next(
            (
                r
                for r, e in control.emulator._extras.items()
                if e.kind == ref.get("kind") and r.group == group and r.version == version
            ),
            None,
        )
        if owner is None:
            detail = (
                "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for "
                f"APIVersion {ref.get('apiVersion')} Kind {ref.get('kind')}"
            )
            raise _refused(attrs, name, detail)
        owner_name = str(ref.get("name", ""))
        plural, ns = str(owner.plural), attrs.namespace
        record = Attributes(identity.name, "update", group, plural, "finalizers", ns, owner_name)
        allowed, reason = control.authorizer.authorize(identity, record)
        control.audit.record(record, allowed)
        if not allowed:
            detail = (
                "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers "
                f"on: {reason}, <nil>"
            )
            raise _refused(attrs, name, detail)


def _refused(attrs: Attributes, name: str, detail: str) -> ApiError:
    """admission.NewForbidden: the object's resource and name, then the plugin's reason."""
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    quoted = f' "{name}"' if name else ""
    details = {"group": attrs.group, "kind": attrs.resource, **({"name": name} if name else {})}
    message = f"{qualified}{quoted} is forbidden: {detail}"
    return ApiError(status=403, reason="Forbidden", message=message, details=details)
