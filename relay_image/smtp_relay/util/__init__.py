"""Small helpers with no relay knowledge (durable file writes).

The bottom layer: imports nothing else of the relay.
"""
