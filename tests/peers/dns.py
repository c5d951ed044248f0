"""Test peer fixtures: dns (filled in by its owner)."""
