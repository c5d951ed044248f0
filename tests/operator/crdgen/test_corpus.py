"""The CRD schema and the pydantic models accept and refuse the same documents.

Each file under corpus/valid must pass both; each file under corpus/invalid must fail both, and its
`# pydantic:` and `# crd:` header lines name a fragment of the message each side must give, so a
refusal for the wrong reason does not count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.manifest import ManifestError, format_validation_error, parse_spec
from tests.operator.crdgen.schema_check import crd_errors

CORPUS = Path(__file__).parent / "corpus"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
CRDS = {"SmtpRelay": smtprelay_crd(), "SendingDomain": sendingdomain_crd()}


def model_errors(document: dict[str, Any]) -> list[str]:
    """What the pydantic side says about the document's spec (empty: accepted)."""
    if document["kind"] == "SmtpRelay":
        try:
            parse_spec(document.get("spec"))
        except ManifestError as exc:
            return exc.problems
        return []
    try:
        SendingDomainSpec.model_validate(document.get("spec") or {})
    except ValidationError as exc:
        return format_validation_error(exc)
    return []


def expectations(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ":" in line:
            side, _, fragment = line[2:].partition(": ")
            if side in ("pydantic", "crd"):
                found[side] = fragment.strip()
    return found


def test_corpus_is_not_empty() -> None:
    assert len(VALID) >= 5
    assert len(INVALID) >= 20
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in VALID + INVALID}
    assert kinds == {"SmtpRelay", "SendingDomain"}


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_documents_pass_both(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert model_errors(document) == []
    assert crd_errors(CRDS[document["kind"]], document) == []


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_documents_fail_both_with_the_reason(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    expected = expectations(path)
    assert set(expected) == {"pydantic", "crd"}, f"{path.name}: needs '# pydantic:' and '# crd:' header lines"
    model = model_errors(document)
    crd = crd_errors(CRDS[document["kind"]], document)
    assert any(expected["pydantic"] in line for line in model), model
    assert any(expected["crd"] in line for line in crd), crd


def test_examples_pass_both() -> None:
    """The examples shipped for `kubectl apply` are valid on both sides too."""
    root = Path(__file__).resolve().parents[3] / "examples"
    checked = 0
    for name in ("smtprelay.yaml", "sendingdomain.yaml"):
        for document in yaml.safe_load_all((root / name).read_text()):
            if document and document.get("kind") in CRDS:
                assert model_errors(document) == []
                assert crd_errors(CRDS[document["kind"]], document) == []
                checked += 1
    assert checked == 2
