"""`relayfleet-operator`: kopf's `run` with the operator's handlers already loaded.

Everything after the program name is kopf's own flags (--namespace/-n, --all-namespaces/-A,
--standalone, --liveness, --verbose, --peering, ...), so the operator behaves like any kopf
operator and its docs apply. Settings come from RELAYFLEET_* environment variables (settings.py).
With --peering NAME the operator peers through the ClusterKopfPeering NAME (created at start if absent,
handlers/wiring.py) with a priority from its start time, so of several pods the oldest handles.
"""

from __future__ import annotations

import random
import sys
import time

HANDLERS_MODULE = "relay_operator.handlers"
PRIORITY_CEILING = 2**53 - 1
"""Priorities stay below this (JSON numbers every client reads exactly), and above 0 until the year 2255."""


def peering_priority(started: float, jitter: int) -> int:
    """kopf's peering priority of an operator started at `started` (epoch seconds): the older, the higher.

    kopf pauses every operator that sees a peer of higher priority, and every one of a tie, so the peered
    pods of a Deployment need distinct priorities; ordering them by start time keeps the pod that handles
    when a newer one joins (a rollout does not hand over at each new pod), and the next oldest takes over
    when it stops. `jitter` (0-999) breaks the tie of pods started in the same millisecond.
    """
    if not 0 <= jitter < 1000:
        raise ValueError(f"jitter must be within 0-999, not {jitter}")
    return PRIORITY_CEILING - (int(started * 1000) * 1000 + jitter)


def kopf_argv(argv: list[str], *, started: float | None = None, jitter: int | None = None) -> list[str]:
    """kopf's command line for our arguments: `run -m relay_operator.handlers ...`.

    Without a namespace flag the operator serves every namespace, as a cluster operator should. With
    `--peering` (the chart's replicaCount > 1) and no `--priority`, the priority of `peering_priority`.
    """
    args = list(argv)
    if not any(a in ("-n", "-A", "--all-namespaces") or a.startswith("--namespace") for a in args):
        args.append("--all-namespaces")
    peered = any(a in ("-P", "--peering") or a.startswith("--peering=") for a in args)
    if peered and not any(a in ("-p", "--priority") or a.startswith("--priority=") for a in args):
        when = time.time() if started is None else started
        args.append(f"--priority={peering_priority(when, random.randrange(1000) if jitter is None else jitter)}")
    return ["run", "-m", HANDLERS_MODULE, *args]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    from kopf import cli as kopf_cli  # import late: `--help` of the wrapper must not need a cluster

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        sys.stdout.write("\nkopf run options:\n")
        kopf_cli.main(["run", "--help"], prog_name="relayfleet-operator")
        return
    kopf_cli.main(kopf_argv(args), prog_name="relayfleet-operator")


if __name__ == "__main__":
    main()
