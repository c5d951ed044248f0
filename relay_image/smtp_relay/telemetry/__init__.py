"""Metrics and logging of the relay process."""
