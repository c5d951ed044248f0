"""Real scanner peers for the engine tests, until tests/conftest.py registers tests.peers.* as plugins."""

from tests.peers.clamd import clamd
from tests.peers.rspamd import rspamd
from tests.peers.spamd import spamd

__all__ = ["clamd", "rspamd", "spamd"]
