"""A real SpamAssassin spamd on 127.0.0.1 with a private site config that never touches the network.

`--siteconfigpath` replaces /etc/spamassassin, so the plugin loaders (*.pre) are copied into the
private folder next to a local.cf that switches off Bayes (no learning state between tests), the
network tests (`skip_rbl_checks`, `dns_available no`, `-L`) and points any remaining DNS use at a
closed 127.0.0.1 port. The rules themselves ship in the package (/usr/share/spamassassin). spamd is
ready in about 1.2 s and costs 100+ MB per child, so there is one per session with one child.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.peers.ports import HOST, free_port

from tests.peers.daemon import Daemon, running, start_retrying, wait_until_ready

SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
SITE_CONFIG = Path("/etc/spamassassin")
START_TIMEOUT = 60.0


@dataclass
class Spamd(Daemon):
    """A running spamd (`address` is what SpamSpec.address takes); `stop` stops its children too."""

    name = "spamd"
    log_file = "spamd.log"


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in sock.recv(128)
    except OSError:
        return False


def start_spamd(folder: Path) -> Spamd:
    """Start spamd in the foreground on a free port with a private, offline site config; wait for PONG."""
    etc = folder / "etc"
    etc.mkdir(parents=True)
    for pre in SITE_CONFIG.glob("*.pre"):
        shutil.copy(pre, etc / pre.name)
    unused_dns = free_port()  # nothing listens here: a DNS query would fail at once, never leave the host
    (etc / "local.cf").write_text(
        f"dns_server 127.0.0.1:{unused_dns}\n"
        "dns_available no\nskip_rbl_checks 1\nuse_bayes 0\nbayes_auto_learn 0\n"
        "use_razor2 0\nuse_pyzor 0\nuse_dcc 0\nuse_auto_whitelist 0\n"
    )
    home = folder / "home"
    home.mkdir()
    os.chmod(folder, 0o755)  # spamd's children run as nobody and read the site config
    return start_retrying("spamd", lambda: _start_spamd_once(folder, etc, home))


def _start_spamd_once(folder: Path, etc: Path, home: Path) -> Spamd:
    port = free_port()
    cmd = [
        SPAMD, f"--siteconfigpath={etc}", f"--listen={HOST}:{port}", "--local", "--nouser-config",
        f"--helper-home-dir={home}", "--max-children=1", "--min-children=1", "--min-spare=1", "--max-spare=1",
        f"--pidfile={folder / 'spamd.pid'}", "--syslog-socket=file",
        f"--syslog={folder / 'spamd.log'}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--username=nobody")
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Spamd(HOST, port, folder, process)
    wait_until_ready(server, lambda: _ping(port), START_TIMEOUT)
    return server


@pytest.fixture(scope="session")
def spamd() -> Iterator[Spamd]:
    """A real spamd (host, port, address); GTUBE scores 1000, network and Bayes tests are off."""
    with running(SPAMD, start_spamd) as server:
        yield server
