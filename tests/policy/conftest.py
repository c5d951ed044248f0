"""Real content-scanner peers for the policy tests, until tests/conftest.py registers them as plugins."""

from tests.peers.clamd import clamd, clamd_factory
from tests.peers.rspamd import rspamd
from tests.peers.spamd import spamd

__all__ = ["clamd", "clamd_factory", "rspamd", "spamd"]
