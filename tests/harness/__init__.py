"""Test harness shared by every suite: polling helpers, metric reads, relay processes, kopf in a thread.

Peers (the real programs tests talk to) live apart in `tests/peers`; the Kubernetes API emulator in `tests/kube`.
"""
