"""A real rspamd on 127.0.0.1: only the normal worker (on a free port), no network lookups.

rspamd's stock configuration is used, with a private LOCAL_CONFDIR that binds the normal worker to a
free port, switches off the controller and proxy workers (fixed ports 11334/11332 otherwise), points
rspamd's resolver at a closed 127.0.0.1 port (so it can never query public DNS, and fails at once)
and turns off the modules that exist only to ask the network (fuzzy, RBL/SURBL, phishing feeds, ...).

The first start compiles rspamd's regular expressions with Hyperscan (about 10 s). The compiled
cache is kept in `HS_CACHE` (outside the repository, shared by all runs on the machine; override with
RELAYFLEET_RSPAMD_CACHE), so later starts take under a second; everything else rspamd writes lives in
a private folder removed at teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.peers.ports import HOST, free_port

from tests.peers.daemon import Daemon, running, start_retrying, wait_until_ready

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
HS_CACHE = Path(os.environ.get("RELAYFLEET_RSPAMD_CACHE", "/tmp/relayfleet-rspamd-hs"))
START_TIMEOUT = 120.0
OFFLINE_MODULES = (
    "fuzzy_check", "rbl", "surbl", "phishing", "asn", "url_redirector", "neural", "reputation",
    "rspamd_update", "mx_check", "emails", "dcc", "external_services", "antivirus",
    # DNS-based checks the relay does itself (SPF) or that only add DNSFAIL noise without a resolver:
    "spf", "dkim", "dmarc", "arc", "hfilter",
)  # fmt: skip


@dataclass
class Rspamd(Daemon):
    """A running rspamd: `address` is its normal worker, as SpamSpec.address takes it; `stop` stops the
    main process, which stops its workers."""

    name = "rspamd"
    log_file = "log/rspamd.log"
    stop_timeout = 15.0
    log_tail = 3000


def _ping(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2.0) as response:
            return bool(response.status == 200 and b"pong" in response.read())
    except (OSError, urllib.error.URLError):
        return False


def _write_config(local: Path, port: int) -> None:
    (local / "local.d").mkdir(parents=True)
    (local / "override.d").mkdir()
    unused_dns = free_port()
    (local / "override.d" / "worker-normal.inc").write_text(f'bind_socket = "{HOST}:{port}";\ncount = 1;\n')
    for worker in ("controller", "proxy"):
        (local / "override.d" / f"worker-{worker}.inc").write_text(
            f'enabled = false;\ncount = 0;\nbind_socket = "{HOST}:{free_port()}";\n'
        )
    (local / "override.d" / "options.inc").write_text(
        f'dns {{ nameserver = ["{HOST}:{unused_dns}"]; timeout = 0.2s; retransmits = 1; }}\n'
        f'hs_cache_dir = "{HS_CACHE}/";\n'
    )
    for module in OFFLINE_MODULES:
        (local / "local.d" / f"{module}.conf").write_text("enabled = false;\n")


def start_rspamd(folder: Path) -> Rspamd:
    """Start rspamd (no fork) with a private config and state; wait until /ping answers pong.

    Retried on a fresh port when rspamd exits at once: another process may take the probed port first.
    """
    for sub in ("db", "run", "log"):
        (folder / sub).mkdir()
    HS_CACHE.mkdir(parents=True, exist_ok=True)
    return start_retrying("rspamd", lambda: _start_rspamd_once(folder))


def _start_rspamd_once(folder: Path) -> Rspamd:
    port = free_port()
    shutil.rmtree(folder / "local", ignore_errors=True)
    _write_config(folder / "local", port)
    cmd = [RSPAMD, "-f", "-c", "/etc/rspamd/rspamd.conf"]
    if os.geteuid() == 0:
        user = pwd.getpwnam("_rspamd")
        for path in (folder, HS_CACHE, *folder.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        cmd += ["-u", "_rspamd", "-g", "_rspamd"]
    for var, sub in (("LOCAL_CONFDIR", "local"), ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")):
        cmd.append(f"--var={var}={folder / sub}")
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Rspamd(HOST, port, folder, process)
    wait_until_ready(server, lambda: _ping(port), START_TIMEOUT)
    return server


@pytest.fixture(scope="session")
def rspamd() -> Iterator[Rspamd]:
    """A real rspamd normal worker (host, port, address): GTUBE gives action reject; no network lookups."""
    with running(RSPAMD, start_rspamd) as server:
        yield server
