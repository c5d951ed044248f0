"""Every CEL rule in the CRDs has its Python mirror (test_corpus proves the two agree)."""

from __future__ import annotations

from crdgen.rules import RULE_MIRRORS
from tests.operator.crdgen.generated import CRDS, nodes, spec_schema


def test_every_cel_rule_has_a_python_mirror() -> None:
    for name in CRDS:
        for path, node in nodes(spec_schema(name)):
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["rule"] in RULE_MIRRORS, path
                assert rule["message"], path
