"""`smtp-relay`: run one relay from an SmtpRelay manifest, only check a manifest, or check the DNS
records of SendingDomains (`domains`, see `smtp_relay.dnscheck.cli`).

`run --workers N` (N > 1) makes this process a supervisor of N relay processes sharing the SMTP ports
(see `smtp_relay.admin.supervisor`); the flags hidden from `--help` are how it starts them.

Exit codes: 0 clean stop, 2 manifest refused (every problem printed with its field path), 1 other
start-up failure (for example a port already in use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from smtp_relay.config.manifest import ManifestError
from smtp_relay.config.source import ConfigSource
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.telemetry import logsetup

EXIT_BAD_MANIFEST = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtp-relay", description="relayfleet SMTP relay")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the SmtpRelay of a manifest")
    check = commands.add_parser("check", help="validate a manifest and its Secrets, then exit")
    for sub in (run, check):
        sub.add_argument("-f", "--file", type=Path, required=True, help="YAML with one SmtpRelay (+ Secrets)")
        sub.add_argument(
            "--secrets-dir",
            type=Path,
            default=None,
            help="folder of mounted Secrets as <secret>/<key> files (in a pod)",
        )
    domains = commands.add_parser(
        "domains", help="check the DNS records of SendingDomains (DKIM, SPF, DMARC, return path) and print them"
    )
    from smtp_relay.dnscheck.cli import add_arguments as add_domains_arguments

    add_domains_arguments(domains)
    run.add_argument("--spool", type=Path, default=Path("var/spool"), help="spool folder (default var/spool)")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--http-port", type=int, default=9025, help="metrics/health/drain port (default 9025)")
    run.add_argument("--hostname", default="", help="name in the banner and Received headers (default FQDN)")
    run.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("RELAY_GRACE_SECONDS", "300")),
        help="seconds to keep delivering after SIGTERM (default 300)",
    )
    run.add_argument(
        "--admin-token-file",
        type=Path,
        default=os.environ.get("RELAY_ADMIN_TOKEN_FILE") or None,
        help="bearer token of the admin API (queue, drain, quarantine); without it those routes answer 403",
    )
    run.add_argument(
        "--drain-liveness-timeout",
        type=float,
        default=float(os.environ.get("RELAY_DRAIN_LIVENESS_TIMEOUT", "3600")),
        help="seconds after a POST /drain nobody undid before /livez fails (0: never; default 3600)",
    )
    run.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (several processes, one port)")
    run.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "INFO"))
    run.add_argument(
        "--workers",
        type=_positive,
        default=os.environ.get("RELAY_WORKERS", "1"),
        help="relay processes sharing the SMTP ports under one supervisor (default 1: no supervisor)",
    )
    # Internal: how the supervisor starts its workers (see smtp_relay.admin.supervisor).
    hidden = argparse.SUPPRESS
    run.add_argument("--worker-index", default=None, help=hidden)
    run.add_argument("--parent-pid", type=int, default=None, help=hidden)
    run.add_argument("--http-host", default=None, help=hidden)
    run.add_argument("--port-file", type=Path, default=None, help=hidden)
    run.add_argument("--shared-dir", type=Path, default=None, help=hidden)
    run.add_argument("--no-listen", action="store_true", help=hidden)
    return parser


LIMITS_WORKERS_ENV = "RELAY_LIMITS_WORKERS"
"""Set by the supervisor for its workers: how many listening processes share this pod's part of a limit."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its supervisor (best effort, Linux): SIGKILL frees its spool lock and
    ports at once for the next supervisor; everything it acknowledged is already on disk."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the supervisor died before the prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "domains":
        from smtp_relay.dnscheck.cli import run as run_domains

        return run_domains(args)
    source = ConfigSource(manifest=args.file, secrets_dir=args.secrets_dir)
    if args.command == "check":
        try:
            config = source.load()
        except ManifestError as exc:
            print(f"{args.file}: refused:\n{exc}", file=sys.stderr)
            return EXIT_BAD_MANIFEST
        print(f"{args.file}: SmtpRelay {config.namespace}/{config.name} is valid")
        return 0

    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    tag = "" if args.worker_index is None else f"[worker {args.worker_index}] "
    logsetup.configure(args.log_level.upper(), f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", sys.stderr)
    # aiosmtpd's own logger says "Peer: ..." and lists AUTH mechanisms the relay may not offer; the
    # relay logs each connection's outcome itself.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.worker_index is None:
        from smtp_relay.admin.fleet import needs_supervisor

        if needs_supervisor(args.spool, args.workers):
            return _supervise(args, source)

    from smtp_relay.admin.auth import AdminTokenError  # imported late: `check` needs none of the I/O stack
    from smtp_relay.app import Relay, RelayOptions

    options = RelayOptions(
        spool_dir=args.spool,
        host=args.host,
        http_port=args.http_port,
        hostname=args.hostname,
        grace=args.grace,
        reuse_port=args.reuse_port,
        http_host=args.http_host,
        shared_dir=args.shared_dir,
        listen=not args.no_listen,
        port_file=args.port_file,
        admin_token_file=args.admin_token_file,
        drain_liveness_timeout=args.drain_liveness_timeout,
        workers=int(os.environ.get(LIMITS_WORKERS_ENV, "1")) if args.worker_index is not None else 1,
    )
    try:
        relay = Relay(source, options)
    except AdminTokenError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    except ManifestError as exc:
        print(f"{args.file}: refused:\n{exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    if args.worker_index is None:
        _print_where_to_look(relay.config.spec, options.spool_dir)
    try:
        return _run(relay.run_until_stopped())
    except OSError as exc:
        logging.getLogger("smtp_relay").error("cannot start: %s", exc)
        return 1


def _supervise(args: argparse.Namespace, source: ConfigSource) -> int:
    """`--workers N`: check the manifest here (exit 2 before any process or spool exists), then supervise."""
    from smtp_relay.admin.auth import AdminTokenError
    from smtp_relay.admin.supervisor import Supervisor, SupervisorOptions

    try:
        config = source.load()
    except ManifestError as exc:
        print(f"{args.file}: refused:\n{exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    _print_where_to_look(config.spec, args.spool)
    os.environ[LIMITS_WORKERS_ENV] = str(args.workers)  # the workers inherit it: their share of a fleet-wide limit
    options = SupervisorOptions(
        manifest=args.file,
        secrets_dir=args.secrets_dir,
        spool_dir=args.spool,
        workers=args.workers,
        host=args.host,
        http_port=args.http_port,
        hostname=args.hostname,
        grace=args.grace,
        log_level=args.log_level,
        admin_token_file=args.admin_token_file,
        drain_liveness_timeout=args.drain_liveness_timeout,
    )
    try:
        supervisor = Supervisor(options)
    except AdminTokenError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    try:
        return _run(supervisor.run())
    except OSError as exc:
        logging.getLogger("smtp_relay").error("cannot start: %s", exc)
        return 1


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where available: it serves the same load with a third less CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def _print_where_to_look(spec: SmtpRelaySpec, spool_dir: Path) -> None:
    """Tell a newcomer where captured mail lands (the quickstart's whole point)."""
    folders = {d.capture.folder for d in [spec.routing.default, *spec.routing.routes] if d.capture is not None}
    for folder in sorted(folders):
        print(f"captured mail goes to {spool_dir / folder}/new (spam-tagged: .Junk/new)", file=sys.stderr)


if __name__ == "__main__":  # how the supervisor starts its workers: `python -m smtp_relay.cli run ...`
    sys.exit(main())
