"""The HTTP side of the relay and the --workers supervisor."""
