"""Fields of built-in kinds that the apiserver's update validation refuses to change.

From k8s.io/kubernetes pkg/apis/apps/validation (ValidateStatefulSetUpdate) and pkg/apis/core/validation
(ValidateServiceUpdate, ValidatePersistentVolumeClaimUpdate, ValidateConfigMapUpdate, ValidateSecretUpdate),
as of Kubernetes 1.31. Values the apiserver would have defaulted are defaulted here before comparing, so an
update that spells a default out is not mistaken for a change.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube.fielderr import FieldError, forbidden, invalid
from tests.kube.quantity import QuantityError, parse

Json = dict[str, Any]
STS_MUTABLE = (
    "replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy", "minReadySeconds",
)  # fmt: skip
STS_MESSAGE = (
    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', "
    "'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
)
PVC_MESSAGE = (
    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
)
IMMUTABLE_SET = "field is immutable when `immutable` is set"


def _claim_spec(spec: Any) -> Json:
    spec = copy.deepcopy(spec) if isinstance(spec, dict) else {}
    spec.setdefault("volumeMode", "Filesystem")
    return spec


def _sts_spec(spec: Any) -> Json:
    spec = {k: v for k, v in (spec or {}).items() if k not in STS_MUTABLE and v not in (None, "")}
    spec.setdefault("podManagementPolicy", "OrderedReady")
    templates = []
    for t in spec.get("volumeClaimTemplates") or []:
        t = {k: v for k, v in t.items() if k not in ("status", "apiVersion", "kind")} if isinstance(t, dict) else t
        if isinstance(t, dict):
            t["spec"] = _claim_spec(t.get("spec"))
        templates.append(t)
    if templates:
        spec["volumeClaimTemplates"] = templates
    return spec


def _storage(spec: Json) -> Any:
    text = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    try:
        return parse(str(text)).value if text is not None else None
    except QuantityError:
        return None


def update_errors(kind: str, old: Json, new: Json) -> list[FieldError]:
    """The immutability errors of an update of ``old`` to ``new`` (both built-in objects of ``kind``)."""
    errors: list[FieldError] = []
    if kind == "StatefulSet":
        if _sts_spec(old.get("spec")) != _sts_spec(new.get("spec")):
            errors.append(forbidden("spec", STS_MESSAGE))
    elif kind == "Service":
        before, spec = (old.get("spec") or {}).get("clusterIP"), new.get("spec") or {}
        if before and spec.get("clusterIP") in (None, ""):
            spec["clusterIP"] = before  # patchAllocatedValues keeps what was allocated
            if "clusterIPs" in (old.get("spec") or {}):
                spec.setdefault("clusterIPs", old["spec"]["clusterIPs"])
        elif before and spec.get("clusterIP") != before:
            errors.append(invalid("spec.clusterIP", spec.get("clusterIP"), "field is immutable"))
    elif kind == "PersistentVolumeClaim":
        old_spec, new_spec = _claim_spec(old.get("spec")), _claim_spec(new.get("spec"))
        bound = (old.get("status") or {}).get("phase") == "Bound"
        strip = ("resources", "volumeAttributesClassName") if bound else ()
        if not old_spec.get("volumeName"):
            strip = (*strip, "volumeName")  # the binder fills it in
        if {k: v for k, v in old_spec.items() if k not in strip} != {
            k: v for k, v in new_spec.items() if k not in strip
        }:
            errors.append(forbidden("spec", PVC_MESSAGE))
        elif bound:
            before_size, after_size = _storage(old_spec), _storage(new_spec)
            if before_size is not None and after_size is not None and after_size < before_size:
                errors.append(forbidden("spec.resources.requests.storage", "field can not be less than previous value"))
    elif kind in ("ConfigMap", "Secret"):
        if old.get("immutable") is True:
            if new.get("immutable") is not True:
                errors.append(forbidden("immutable", IMMUTABLE_SET))
            for key in ("data", "binaryData") if kind == "ConfigMap" else ("data",):
                if (old.get(key) or {}) != (new.get(key) or {}):
                    errors.append(forbidden(key, IMMUTABLE_SET))
        if kind == "Secret" and (old.get("type") or "Opaque") != (new.get("type") or "Opaque"):
            errors.append(invalid("type", new.get("type") or "Opaque", "field is immutable"))
    return errors
