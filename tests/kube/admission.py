"""What the apiserver does to an object between decoding a write and storing it: the emulator's one hook.

``KubeEmulator`` calls ``Admission.admit`` on every create and update (PUT, PATCH, /status, /scale) and
``Admission.register_crd`` whenever a CRD is created or changed; the modules beside this one do the work:

* custom resources (structural.py, cel_rules.py): prune unknown fields (warnings, or 400/422 under
  ``fieldValidation=Strict``), drop non-nullable nulls, apply defaults, validate against the schema, then run
  the CEL rules unless a blocking error was found -- 422 ``<Kind>.<group> "<name>" is invalid: ...``; on
  update an error at a value that did not change is dropped (CRD validation ratcheting, on by default 1.30+);
* built-in kinds (builtin.py, immutable.py): decoding errors, unknown fields, canonical quantities, required
  fields, immutable fields;
* CRDs (cel_cost.py): the static cost of their CEL rules.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import kmock

from tests.kube import builtin, cel_cost, cel_rules, immutable, structural
from tests.kube.fielderr import FieldError, StatusError, bad_request, invalid, new_invalid

Json = dict[str, Any]
DIRECTIVES = ("Ignore", "Warn", "Strict")


def _value_at(obj: Any, path: str) -> Any:
    """The value at a field path like ``spec.listeners[0].name`` (None when absent)."""
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            obj = obj[index] if isinstance(obj, list) and index < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


class Admission:
    """Per-emulator state: the served CRD schemas, the current request's directive and its warnings."""

    def __init__(self, version: str, options: Any = None) -> None:
        self.options = options  # the emulator: its switches are read on every request
        self.version = version
        self.minor = int(version.split(".")[1])
        self.schemas: dict[kmock.resource, Json] = {}
        self.directive = "Warn"
        self.verb = "create"
        self.warnings: list[str] = []

    def version_info(self) -> Json:
        """What ``/version`` answers (apimachinery version.Info)."""
        major, minor = self.version.split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{self.version}",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T07:28:49Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def unserved(self, resources: list[kmock.resource], kind_of: Callable[[kmock.resource], str]) -> list[Any]:
        """Built-in resources (of a built-in API group) that the emulated version does not serve."""
        known = builtin.kinds(self.version)
        groups = {g for (g, _, _) in known}
        return [
            r
            for r in resources
            if (r.group or "") in groups and ((r.group or ""), str(r.version), kind_of(r)) not in known
        ]

    # -- the request --

    def begin(self, method: str, params: dict[str, str]) -> None:
        directive = params.get("fieldValidation") or "Warn"
        if directive not in DIRECTIVES:
            raise bad_request(f'fieldValidation "{directive}" is invalid: must be one of Ignore, Warn, Strict')
        self.directive = directive
        self.verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method.upper(), "other")
        self.warnings = []

    def take_warnings(self) -> list[str]:
        found, self.warnings = self.warnings, []
        return found

    # -- CRDs --

    def register_crd(self, crd: Json) -> None:
        """Refuse a CRD whose rules the apiserver would refuse; remember each version's schema."""
        spec = crd.get("spec") or {}
        name = (crd.get("metadata") or {}).get("name", "")
        errors = cel_cost.crd_errors(crd, self.minor)
        if errors:
            raise new_invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, errors)
        plural = (spec.get("names") or {}).get("plural")
        for version in spec.get("versions") or []:
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or spec.get("validation", {}).get(
                "openAPIV3Schema"
            )
            res = kmock.resource(spec.get("group"), version.get("name"), plural)
            if schema:
                self.schemas[res] = schema
            else:
                self.schemas.pop(res, None)

    # -- writes --

    def admit(
        self, res: kmock.resource, kind: str, custom: bool, old: Json | None, new: Json, status_only: bool = False
    ) -> Json:
        """The object to store for a write of ``new`` over ``old`` (None on create), or a StatusError.

        `status_only`: a write of the status subresource, where everything but ``status`` is ``old``'s own."""
        if custom:
            if not getattr(self.options, "validate_custom_resources", True):
                return new
            schema = self.schemas.get(res)
            return self._custom(res, kind, schema, old, new) if schema else new
        definition = builtin.kinds(self.version).get((res.group or "", str(res.version), kind))
        if not definition:
            return new
        return self._builtin(res, kind, definition, old, new, status_only and old is not None)

    def _unknown(self, kind: str, version: str, paths: list[str], obj: Json) -> None:
        if not paths or self.directive == "Ignore":
            return
        messages = [f'unknown field "{p}"' for p in paths]
        if self.directive == "Warn":
            self.warnings.extend(messages)
            return
        strict = "strict decoding error: " + ", ".join(messages)
        raise self._decode_failure(kind, version, strict, obj)

    def _decode_failure(self, kind: str, version: str, message: str, obj: Json) -> StatusError:
        if self.verb == "patch":  # patch.go: the patched object did not decode
            return new_invalid("", "", "", [invalid("patch", json.dumps(obj, separators=(",", ":")), message)])
        return bad_request(f"{kind} in version {json.dumps(version)} cannot be handled as a {kind}: {message}")

    def _custom(self, res: kmock.resource, kind: str, schema: Json, old: Json | None, new: Json) -> Json:
        obj = copy.deepcopy(new)
        self._unknown(kind, str(res.version), structural.prune(obj, schema), new)
        structural.prune_nulls(obj, schema)
        structural.apply_defaults(obj, schema)
        errors = structural.validate(obj, schema)
        if structural.blocks_cel(errors):
            errors.append(structural.NOT_CHECKED)
        else:
            errors += cel_rules.evaluate(schema, obj, old if old is not None else cel_rules._MISSING, minor=self.minor)
        errors = self._ratchet(errors, old, obj)
        if errors:
            raise new_invalid(kind, res.group or "", obj["metadata"].get("name", ""), errors)
        return obj

    def _ratchet(self, errors: list[FieldError], old: Json | None, new: Json) -> list[FieldError]:
        """CRDValidationRatcheting: on update, an error at a value equal to the stored one is let through."""
        if old is None:
            return errors
        kept = [e for e in errors if e.field == "<nil>" or _value_at(new, e.field) != _value_at(old, e.field)]
        if len(kept) == 1 and kept[0] is structural.NOT_CHECKED:
            return []
        return kept

    def _builtin(
        self, res: kmock.resource, kind: str, definition: str, old: Json | None, new: Json, status_only: bool
    ) -> Json:
        try:
            if status_only:  # the rest was decoded when `old` was stored (decoding is idempotent): only the status
                decoded = builtin.decode({k: v for k, v in new.items() if k == "status"}, definition, self.version)
                decoded.obj, decoded.missing = {**new, **decoded.obj}, []  # status fields are never required
            else:
                decoded = builtin.decode(new, definition, self.version)
        except builtin.DecodeError as e:
            raise self._decode_failure(kind, str(res.version), str(e), new) from None
        self._unknown(kind, str(res.version), decoded.unknown, new)
        obj = decoded.obj
        if kind == "Secret" and isinstance(obj.get("stringData"), dict):  # v1 -> internal conversion
            data = obj.setdefault("data", {}) or {}
            for key, text in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(text).encode()).decode()
            obj["data"] = data
        errors = list(decoded.missing)
        if old is not None:
            errors += immutable.update_errors(kind, old, obj)
        if errors:
            raise new_invalid(kind, res.group or "", obj["metadata"].get("name", ""), errors)
        return obj
