"""The chart tests run the `helm test` script against a real relay process."""

from tests.harness.relay_proc import relay_factory

__all__ = ["relay_factory"]
