"""The CRDs as generated, and a walk over their schema nodes, for the crdgen tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from crdgen.documents import all_crds

CRDS = all_crds()


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a schema with its path (`.spec.listeners[].port`)."""
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def spec_schema(name: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD file `name`."""
    schema: dict[str, Any] = CRDS[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
