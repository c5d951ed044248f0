"""Fixtures of the end-to-end relay tests."""

from tests.e2e.relay_proc import relay_factory

__all__ = ["relay_factory"]
