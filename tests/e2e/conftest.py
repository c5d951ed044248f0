"""The fleet fixtures (tests/e2e/fleet.py) for every test here."""

from tests.e2e.fleet import fleet, termination_grace

__all__ = ["fleet", "termination_grace"]
