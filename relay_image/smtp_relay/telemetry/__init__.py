"""Metrics and logging of the relay process.

The bottom layer: imports nothing else of the relay, so every stage can count and log.
"""
