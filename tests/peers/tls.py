"""Test peer fixtures: tls (filled in by its owner)."""
