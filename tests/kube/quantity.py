"""Kubernetes ``resource.Quantity`` parsing and canonical form, as apimachinery's quantity.go does it.

The apiserver decodes every Quantity field into ``resource.Quantity`` and encodes it back on the way out, so
what a client reads is canonical: ``1024Mi`` -> ``1Gi``, ``0.5`` -> ``500m``, ``1.5Gi`` -> ``1536Mi``. An
operator that compares what it wrote with what it reads back must expect that; the emulator does the same so
such a comparison fails here first. Malformed quantities are refused with apimachinery's own messages.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass

ERR_FORMAT = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
ERR_SUFFIX = "unable to parse quantity's suffix"
ERR_NUMERIC = "unable to parse numeric part of quantity"

_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_NAMES = {v: k for k, v in _DECIMAL.items()}
_BINARY_NAMES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
_MAX_INT64 = 2**63 - 1
_CTX = decimal.Context(prec=200)


class QuantityError(ValueError):
    """A string that ``resource.ParseQuantity`` refuses; the message is apimachinery's."""


@dataclass(frozen=True)
class Quantity:
    value: decimal.Decimal
    format: str  # "DecimalSI", "BinarySI" or "DecimalExponent"
    cached: str | None = None  # ParseQuantity keeps the input when it already is canonical

    def __str__(self) -> str:
        return self.cached if self.cached is not None else canonical(self.value, self.format)


def _split(text: str) -> tuple[bool, str, str, str, str]:
    """parseQuantityString: sign, the numeric text, numerator, denominator (digits) and suffix."""
    positive, pos, end = True, 0, len(text)
    if pos < end and text[0] in "+-":
        positive = text[0] != "-"
        pos += 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return positive, "0", "0", "", ""
    start = pos
    while pos < end and text[pos].isdigit():
        pos += 1
    num = text[start:pos] or "0"
    denom = ""
    if pos < end and text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos].isdigit():
            pos += 1
        denom = text[start:pos]
    value, suffix_start = text[:pos], pos
    while pos < end and text[pos] in "eEinumkKMGTP":
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos].isdigit():
        pos += 1
    if pos < end:
        raise QuantityError(ERR_FORMAT)
    return positive, value, num, denom, text[suffix_start:]


def _interpret(suffix: str) -> tuple[int, int, str]:
    """The suffixer: (base, exponent, format) of a suffix."""
    if suffix in _DECIMAL:
        return 10, _DECIMAL[suffix], "DecimalSI"
    if suffix in _BINARY:
        return 2, _BINARY[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE":
        try:
            return 10, int(suffix[1:]), "DecimalExponent"
        except ValueError:
            pass
    raise QuantityError(ERR_SUFFIX)


def parse(text: str) -> Quantity:
    """``resource.ParseQuantity``: the value, its format, and the input kept when it is already canonical."""
    if not text:
        raise QuantityError(ERR_FORMAT)
    if text == "0":
        return Quantity(decimal.Decimal(0), "DecimalSI", "0")
    positive, value, num, denom, suffix = _split(text)
    base, exponent, fmt = _interpret(suffix)
    # The int64 fast path of ParseQuantity decides whether the input string is reused as is.
    if fmt == "BinarySI":
        precision = 15 - len(num) - int(exponent * 3 / 10) - 1 if exponent >= 0 and not denom else -1
        scale = 0
    else:
        precision, scale = 18 - (len(num) + len(denom)), exponent
    if precision >= 0:
        scale -= len(denom)
        shifted = num + denom
        if scale >= -9 and int(shifted) <= _MAX_INT64:
            mantissa = 1 << exponent if fmt == "BinarySI" else 1
            if int(shifted) * mantissa <= _MAX_INT64:
                raw = decimal.Decimal(int(shifted) * mantissa).scaleb(scale, _CTX)
                amount = raw if positive else -raw
                if fmt == "BinarySI":
                    reuse = exponent % 10 == 0 and int(shifted) & 7 != 0
                else:
                    reuse = scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
                return Quantity(amount, fmt, text if reuse else None)
    try:
        amount = decimal.Decimal(value, _CTX)
    except decimal.InvalidOperation:
        raise QuantityError(ERR_NUMERIC) from None
    amount = amount.scaleb(exponent, _CTX) if base == 10 else _CTX.multiply(amount, decimal.Decimal(2) ** exponent)
    if amount != 0:  # round away from zero to whole nanos: "if you want some resources, you should get some"
        amount = amount.quantize(decimal.Decimal("1e-9"), rounding=decimal.ROUND_UP, context=_CTX)
    if fmt == "BinarySI" and abs(amount) > _MAX_INT64:
        amount = decimal.Decimal(_MAX_INT64).copy_sign(amount)
    if fmt == "BinarySI" and 0 < abs(amount) < 1:
        fmt = "DecimalSI"
    return Quantity(amount, fmt)


def canonical(value: decimal.Decimal, fmt: str) -> str:
    """``Quantity.CanonicalizeBytes``: the smallest integer mantissa with a multiple-of-3 (or 1024) exponent."""
    if value == 0:
        return "0"
    if fmt == "BinarySI" and (-1024 < value < 1024 or value != value.to_integral_value()):
        fmt = "DecimalSI"
    sign = "-" if value < 0 else ""
    if fmt == "BinarySI":
        number, power = int(abs(value)), 0
        while power < 6 and number % 1024 == 0:
            number, power = number // 1024, power + 1
        return f"{sign}{number}{_BINARY_NAMES[power]}"
    _, digits, exp = abs(value).normalize(_CTX).as_tuple()
    assert isinstance(exp, int)
    mantissa = int("".join(map(str, digits)))
    extra = exp % 3  # round the exponent down to a multiple of 3, growing the mantissa
    mantissa, exp = mantissa * 10**extra, exp - extra
    if exp < -9:  # not reached for parsed values (rounded to nanos), kept for safety
        mantissa, exp = -(-mantissa // 10 ** (-9 - exp)), -9
    if fmt == "DecimalExponent":
        return f"{sign}{mantissa}" + (f"e{exp}" if exp else "")
    while exp > 18:
        mantissa, exp = mantissa * 1000, exp - 3
    return f"{sign}{mantissa}{_DECIMAL_NAMES[exp]}"


def canonicalize(raw: object) -> str:
    """What the apiserver returns for a Quantity field sent as ``raw`` (a JSON string or number)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise QuantityError(ERR_FORMAT)
    text = raw if isinstance(raw, str) else repr(raw) if isinstance(raw, float) else str(raw)
    return str(parse(text.strip() if isinstance(raw, str) else text))
