"""docs/reference/ is the CRD reference of crds/: current (`make docs`), and naming every field with its schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crdgen.reference import main, references

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
REFERENCE = ROOT / "docs" / "reference"


def test_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdgen.reference", "--crds", str(CRDS), "--out", str(REFERENCE), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "operator")},
    )
    assert result.returncode == 0, result.stderr


def test_a_crd_change_not_in_the_reference_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crds, out = tmp_path / "crds", tmp_path / "reference"
    shutil.copytree(CRDS, crds)
    shutil.copytree(REFERENCE, out)
    assert main(["--crds", str(crds), "--out", str(out), "--check"]) == 0
    path = crds / "smtprelays.relayfleet.io.yaml"
    path.write_text(path.read_text().replace("maximum: 1000\n", "maximum: 999\n", 1))
    assert main(["--crds", str(crds), "--out", str(out), "--check"]) == 1
    assert f"stale, run `make docs`: {out / 'smtprelay.md'}" in capsys.readouterr().err
    assert main(["--crds", str(crds), "--out", str(out)]) == 0
    assert main(["--crds", str(crds), "--out", str(out), "--check"]) == 0
    (out / "sendingdomain.md").unlink()
    assert main(["--crds", str(crds), "--out", str(out), "--check"]) == 1


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field of a CRD schema, walked apart from the generator's own walk."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    items = schema.get("items", {})
    for name, child in items.get("properties", {}).items():
        yield from walk(child, f"{path}[].{name}")


def crd_fields() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for section in ("spec", "status"):
            for name, schema in walk(root["properties"][section], section):
                yield f"{crd['spec']['names']['kind'].lower()}.md", name, schema


def rows(doc: str) -> dict[str, str]:
    return {
        line.split(" | ")[0].removeprefix("| `").rstrip("`"): line
        for line in doc.splitlines()
        if line.startswith("| `")
    }


def test_every_field_has_a_row_with_its_default_bounds_and_description() -> None:
    docs = {name: rows((REFERENCE / name).read_text()) for name in references(CRDS)}
    checked = 0
    for doc, name, schema in crd_fields():
        row = docs[doc].get(name)
        assert row is not None, f"{doc} has no row for {name}"
        text = row.replace("\\|", "|")
        for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"):
            if key in schema:
                assert str(schema[key]) in text, f"{name}: {key} {schema[key]} not in {row}"
        for value in schema.get("enum", []):
            assert f"`{value}`" in text, f"{name}: enum value {value} not in {row}"
        if "pattern" in schema:
            assert f"pattern `{schema['pattern']}`" in text, name
        for rule in schema.get("x-kubernetes-validations", []):
            assert f"`{rule['rule']}`" in text, f"{name}: rule not in {row}"
        if "description" in schema:
            assert " ".join(schema["description"].split()) in text, f"{name}: description not in {row}"
        default = schema.get("default")
        if isinstance(default, (int, float, str)) and not isinstance(default, bool):
            assert f"| `{default}` |" in text or (default == "" and '| `""` |' in text), f"{name}: default {default!r}"
        elif default is not None and "the defaults of its fields" not in text:
            assert json.dumps(default, separators=(", ", ": ")) in text, f"{name}: default {default!r}"
        checked += 1
    assert checked > 150  # both CRDs, spec and status
    # The only rows beyond the fields are the rules on each item of a list (`spec.listeners[]`).
    fields = {(doc, name) for doc, name, _ in crd_fields()}
    extra = {(doc, name) for doc, found in docs.items() for name in found if (doc, name) not in fields}
    assert extra and all(name.endswith("[]") for _, name in extra), extra


def test_known_rows_read_as_a_person_expects() -> None:
    relay = rows((REFERENCE / "smtprelay.md").read_text())
    assert relay["spec.replicas"] == (
        "| `spec.replicas` | integer | `2` | 0 to 1000 "
        "| Number of relay pods (with spec.autoscaling, the operator sets it from the queue). |"
    )
    assert "required; length at most 15" in relay["spec.listeners[].name"]
    assert relay["spec.listeners[].tls"].split(" | ")[1:4] == [
        "string",
        "`none`",
        "one of `none`, `starttls`, `implicit`",
    ]
    assert "list keyed by `type`" in relay["status.conditions"]
    domain = rows((REFERENCE / "sendingdomain.md").read_text())
    assert "one of `1024`, `2048`, `3072`, `4096`" in domain["spec.dkim.keyBits"]
