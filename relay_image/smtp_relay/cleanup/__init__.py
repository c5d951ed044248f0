"""Cleanup: trace headers and every header the relay adds to a message."""
