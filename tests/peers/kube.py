"""Test peer fixtures: kube (filled in by its owner)."""
