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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
SITE_CONFIG = Path("/etc/spamassassin")
HOST = "127.0.0.1"
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Spamd:
    """A running spamd."""

    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def address(self) -> str:
        """host:port, as SpamSpec.address takes it."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        path = self.folder / "spamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop spamd and its children (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
    unused_dns = _free_port()  # nothing listens here: a DNS query would fail at once, never leave the host
    (etc / "local.cf").write_text(
        f"dns_server 127.0.0.1:{unused_dns}\n"
        "dns_available no\nskip_rbl_checks 1\nuse_bayes 0\nbayes_auto_learn 0\n"
        "use_razor2 0\nuse_pyzor 0\nuse_dcc 0\nuse_auto_whitelist 0\n"
    )
    home = folder / "home"
    home.mkdir()
    os.chmod(folder, 0o755)  # spamd's children run as nobody and read the site config
    error: RuntimeError | None = None
    for _ in range(3):  # on a fresh port when spamd exits at once: another process may take the probed port
        try:
            return _start_spamd_once(folder, etc, home)
        except RuntimeError as exc:
            error = exc
    raise RuntimeError(f"spamd did not start: {error}")


def _start_spamd_once(folder: Path, etc: Path, home: Path) -> Spamd:
    port = _free_port()
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
    deadline = time.monotonic() + START_TIMEOUT
    while not _ping(port):
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"{HOST}:{port} not ready in {START_TIMEOUT}s: {server.log()[-2000:]}")
        if process.poll() is not None:
            raise RuntimeError(f"spamd on {HOST}:{port} (exit {process.returncode}): {server.log()[-2000:]}")
        time.sleep(0.1)
    return server


@pytest.fixture(scope="session")
def spamd() -> Iterator[Spamd]:
    """A real spamd (host, port, address); GTUBE scores 1000, network and Bayes tests are off."""
    if not os.access(SPAMD, os.X_OK):
        pytest.skip("spamd is not installed (make test installs the Debian peers)")
    folder = Path(tempfile.mkdtemp(prefix="relayfleet-spamd-"))
    server = start_spamd(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
