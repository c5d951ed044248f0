"""The owned-fields merge: what counts as unchanged, and the smallest patch that restores our fields."""

from __future__ import annotations

from relay_operator.merge import covers, merge_patch


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
