"""resource.Quantity parsing and canonical form (apimachinery pkg/api/resource/quantity.go)."""

from __future__ import annotations

import re

import pytest

from tests.kube.quantity import ERR_FORMAT, ERR_SUFFIX, QuantityError, canonicalize


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1024Mi", "1Gi"), ("0.5", "500m"), ("1000m", "1"), ("1.5Gi", "1536Mi"), ("2000000", "2M"), ("100Mi", "100Mi"),
        ("1.5", "1500m"), ("0.1", "100m"), ("1.5k", "1500"), ("0.0001", "100u"), ("0.0000000001", "1n"), ("8Ki", "8Ki"),
        ("512", "512"), ("2048", "2048"), ("1023Mi", "1023Mi"), ("-1.5Gi", "-1536Mi"), ("0Mi", "0"), ("0", "0"),
        ("1e3", "1e3"), ("1000e0", "1e3"), ("1k", "1k"), ("+1", "+1"), (1, "1"), (0.5, "500m"), (2000, "2k"),
        ("1.G", "1.G"), ("0.5Ki", "512"),
    ],
)  # fmt: skip
def test_canonical_form(raw: object, canonical: str) -> None:
    """Inputs already canonical for ParseQuantity's int64 fast path keep their spelling ("1e3", "+1", "1.G")."""
    assert canonicalize(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("1K", ERR_SUFFIX),
        ("5e", ERR_SUFFIX),
        ("1Mii", ERR_SUFFIX),
        ("abc", ERR_FORMAT),
        ("1.2.3", ERR_FORMAT),
        ("", ERR_FORMAT),
        (True, ERR_FORMAT),
    ],
)
def test_malformed(raw: object, message: str) -> None:
    with pytest.raises(QuantityError, match="^" + re.escape(message) + "$"):
        canonicalize(raw)
