"""`smtp-relay` with one verified SendingDomain and its RSA key given on the command line: the benchmark's
signing relay.

    python -m bench.dkim_relay --dkim-domain example.com --dkim-selector bench --dkim-key key.pem -- run -f ...

The relay's config loader does not read SendingDomain documents from the manifest yet (that lands
separately); until it does, this wraps `ConfigSource.load` so the config it returns carries the
domain, and runs the real `smtp-relay` command line. One process only: `--workers` starts workers
through `python -m smtp_relay`, which would not sign (the benchmark checks the relay's signed count and
stops when it stays at zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from smtp_relay import cli
from smtp_relay.config.domains import DkimKey, SendingDomainConfig, SendingDomains
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.source import ConfigSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dkim_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dkim-domain", required=True)
    parser.add_argument("--dkim-selector", required=True)
    parser.add_argument("--dkim-key", required=True, type=Path, help="PEM RSA private key")
    parser.add_argument("relay_args", nargs=argparse.REMAINDER, help="-- then the smtp-relay arguments")
    args = parser.parse_args(argv)
    relay_args = args.relay_args[1:] if args.relay_args[:1] == ["--"] else args.relay_args
    key = DkimKey(args.dkim_selector, "rsa-sha256", args.dkim_key.read_bytes())
    domains = SendingDomains({args.dkim_domain: SendingDomainConfig(args.dkim_domain, True, (key,))})
    load = ConfigSource.load

    def load_with_domains(source: ConfigSource) -> RelayConfig:
        return dataclasses.replace(load(source), sending_domains=domains)

    ConfigSource.load = load_with_domains  # type: ignore[method-assign]
    return cli.main(relay_args)


if __name__ == "__main__":
    sys.exit(main())
