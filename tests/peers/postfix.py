"""Test peer fixtures: postfix (filled in by its owner)."""
