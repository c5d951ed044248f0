"""The owned-fields merge: what counts as unchanged, and the smallest patch that restores our fields."""

from __future__ import annotations

from decimal import Decimal

from relay_operator.merge import adopt_equal_quantities, covers, merge_patch, quantity_amount


def test_covers_ignores_fields_we_do_not_render() -> None:
    desired = {"spec": {"ports": [{"name": "a", "port": 25}], "type": "ClusterIP"}}
    observed = {"spec": {"ports": [{"name": "a", "port": 25, "nodePort": 30025}], "type": "ClusterIP", "x": 1}}
    assert covers(desired, observed)
    assert merge_patch(desired, observed) is None


def test_merge_patch_keeps_foreign_fields_inside_list_items() -> None:
    desired = {"spec": {"ports": [{"name": "a", "port": 26}, {"name": "b", "port": 27}]}}
    observed = {
        "metadata": {"labels": {"mine": "x"}},
        "spec": {"ports": [{"name": "a", "port": 25, "nodePort": 30025}], "clusterIP": "10.0.0.1"},
    }
    patch = merge_patch(desired, observed)
    assert patch == {"spec": {"ports": [{"name": "a", "port": 26, "nodePort": 30025}, {"name": "b", "port": 27}]}}


def test_covers_is_strict_about_types_and_lengths() -> None:
    assert not covers({"a": True}, {"a": 1})
    assert not covers({"a": [1]}, {"a": [1, 2]})
    assert covers({"a": 1}, {"a": 1.0})


def test_quantity_amounts_follow_kubernetes_suffixes() -> None:
    assert quantity_amount("1Gi") == quantity_amount("1024Mi") == 1024**3
    assert quantity_amount("0.5") == quantity_amount("500m") == Decimal("0.5")
    assert quantity_amount("1e3") == quantity_amount("1k") == quantity_amount(1000) == 1000
    assert quantity_amount("1K") is None and quantity_amount("lots") is None and quantity_amount(True) is None


def test_equal_quantities_take_the_observed_spelling_and_only_under_resources() -> None:
    desired = {
        "spec": {
            "replicas": 1,
            "containers": [{"name": "relay", "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}],
            "claim": {"resources": {"requests": {"storage": "1024Mi"}}},
            "note": "1000m",
        }
    }
    observed = {
        "spec": {
            "replicas": 1,
            "containers": [{"name": "relay", "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}}],
            "claim": {"resources": {"requests": {"storage": "1Gi"}}},
            "note": "1",
        }
    }
    adopted = adopt_equal_quantities(desired, observed)
    assert adopted["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert adopted["spec"]["claim"]["resources"]["requests"]["storage"] == "1Gi"
    assert adopted["spec"]["note"] == "1000m", "a string outside resources is not a quantity"
    assert merge_patch(adopted, observed) == {
        "spec": {"containers": [{"name": "relay", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
                 "note": "1000m"}
    }  # fmt: skip
