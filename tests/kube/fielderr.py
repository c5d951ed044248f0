"""apimachinery's ``field.Error`` and the ``Status`` bodies built from it, formatted as Kubernetes 1.31 does.

Clients and tests match on these strings (``spec.replicas: Invalid value: ...``), so every refusal the emulator
adds goes through here: ``field.Error.ErrorBody``, the aggregate (``[a, b]`` when more than one), and
``errors.NewInvalid`` / ``NewBadRequest``.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any

import kmock

OMIT = object()  # field.OmitValueType: the value is left out of the message
CAUSES = {
    "Required value": "FieldValueRequired",
    "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported",
    "Forbidden": "FieldValueForbidden",
    "Too long": "FieldValueTooLong",
    "Too many": "FieldValueTooMany",
    "Duplicate value": "FieldValueDuplicate",
    "Type": "FieldValueTypeInvalid",  # TypeInvalid prints as "Invalid value"
}


class StatusError(kmock.KubernetesError):
    """A failure ``Status`` raised from the admission modules; the emulator renders it like its own errors."""


def go_float(number: float) -> str:
    """Go's ``%v`` of a float64 (strconv 'g', shortest): exponent form from 1e6 up and below 1e-4."""
    if number == 0:
        return "0"
    _, digits, exp = decimal.Decimal(repr(float(number))).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    point = exp + len(text) - 1
    sign = "-" if number < 0 else ""
    if point < -4 or point >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{sign}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    return sign + format(decimal.Decimal(repr(abs(float(number)))), "f").rstrip("0").rstrip(".")


def go_value(value: Any) -> str:
    """How ErrorBody prints a bad value: strings quoted, simple types plain, maps as Go's %#v."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)}:{_go_inner(v)}" for k, v in value.items())
        return "map[string]interface {}{" + inner + "}"
    return "[]interface {}{" + ", ".join(_go_inner(v) for v in value) + "}"


def _go_inner(value: Any) -> str:
    if isinstance(value, str | dict | list):
        return go_value(value)
    return f"{type(value).__name__}({go_value(value)})" if value is not None else "interface {}(nil)"


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: its type as printed (``Invalid value``, ``Required value``...), path, value, detail."""

    type: str
    field: str
    value: Any = OMIT
    detail: str = ""
    type_invalid: bool = False  # field.TypeInvalid: printed as "Invalid value", cause FieldValueTypeInvalid

    def body(self) -> str:
        text = self.type
        if self.type not in ("Required value", "Forbidden", "Too long", "Internal error") and self.value is not OMIT:
            text += ": " + go_value(self.value)
        return text + (": " + self.detail if self.detail else "")

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        reason = CAUSES["Type"] if self.type_invalid else CAUSES.get(self.type, "FieldValueInvalid")
        return {"reason": reason, "message": self.body(), "field": self.field}


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("Required value", path, detail=detail)


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("Invalid value", path, value, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("Forbidden", path, detail=detail)


def aggregate(errors: list[FieldError]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message, or ``[a, b]`` with duplicates removed."""
    seen: list[str] = []
    for e in errors:
        if str(e) not in seen:
            seen.append(str(e))
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


def new_invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> StatusError:
    """``errors.NewInvalid``: 422 with one cause per field error."""
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": [e.cause() for e in errors]}
    if group:
        details["group"] = group
    message = f"{qualified} {json.dumps(name)} is invalid: {aggregate(errors)}"
    return StatusError(status=422, reason="Invalid", message=message, details=details)


def bad_request(message: str) -> StatusError:
    return StatusError(status=400, reason="BadRequest", message=message)
