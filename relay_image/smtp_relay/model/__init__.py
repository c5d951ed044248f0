"""The message data model every stage shares: envelopes, stored messages, delivery outcomes.

The bottom layer: imports nothing else of the relay.
"""
