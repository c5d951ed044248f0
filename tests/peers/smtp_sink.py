"""Test peer fixtures: smtp_sink (filled in by its owner)."""
