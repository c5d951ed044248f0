"""Tests of the SMTP listener side of the relay."""
