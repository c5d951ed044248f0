"""Fixtures of the end-to-end relay tests."""

from tests.harness.relay_proc import relay_factory

__all__ = ["relay_factory"]
