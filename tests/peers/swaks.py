"""Test peer fixtures: swaks (filled in by its owner)."""
