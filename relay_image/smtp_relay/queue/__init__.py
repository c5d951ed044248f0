"""The queue: the durable spool, and the scheduler that delivers, retries and bounces what it holds.

Imports `delivery`, `config`, `model`, `telemetry` and `util` only (the scheduler is handed its
delivery function, so it does not import `delivery` today).
"""
