"""The reference programs the benchmarks (and the tests, through tests/peers) start: Postfix and smtp-sink.

They live here, not under tests/, because the benchmarks never import the tests.
"""
