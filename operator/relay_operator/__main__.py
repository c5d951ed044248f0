"""`python -m relay_operator` is `relayfleet-operator`."""

from relay_operator.cli import main

main()
