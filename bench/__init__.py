"""Benchmarks run against real peers (Postfix, smtp-sink, smtp-source); see bench/README.md."""
