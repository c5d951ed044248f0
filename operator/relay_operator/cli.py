"""`relayfleet-operator`: kopf's `run` with the operator's handlers already loaded.

Everything after the program name is kopf's own flags (--namespace/-n, --all-namespaces/-A,
--standalone, --liveness, --verbose, --peering, ...), so the operator behaves like any kopf
operator and its docs apply. Settings come from RELAYFLEET_* environment variables (settings.py).
"""

from __future__ import annotations

import sys

HANDLERS_MODULE = "relay_operator.handlers"


def kopf_argv(argv: list[str]) -> list[str]:
    """kopf's command line for our arguments: `run -m relay_operator.handlers ...`.

    Without a namespace flag the operator serves every namespace, as a cluster operator should.
    """
    args = list(argv)
    if not any(a in ("-n", "-A", "--all-namespaces") or a.startswith("--namespace") for a in args):
        args.append("--all-namespaces")
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
