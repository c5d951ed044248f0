"""The one contract and how it is read: spec models, manifest loading, units, Secret references, the resolved config.

The bottom layer: imports nothing else of the relay, so every stage (and the operator) can import it.
"""
