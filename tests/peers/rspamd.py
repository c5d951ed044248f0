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
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
HOST = "127.0.0.1"
HS_CACHE = Path(os.environ.get("RELAYFLEET_RSPAMD_CACHE", "/tmp/relayfleet-rspamd-hs"))
START_TIMEOUT = 120.0
OFFLINE_MODULES = (
    "fuzzy_check", "rbl", "surbl", "phishing", "asn", "url_redirector", "neural", "reputation",
    "rspamd_update", "mx_check", "emails", "dcc", "external_services", "antivirus",
    # DNS-based checks the relay does itself (SPF) or that only add DNSFAIL noise without a resolver:
    "spf", "dkim", "dmarc", "arc", "hfilter",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Rspamd:
    """A running rspamd."""

    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def address(self) -> str:
        """host:port of the normal worker, as SpamSpec.address takes it."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        path = self.folder / "log" / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the main process, which stops its workers (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ping(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2.0) as response:
            return bool(response.status == 200 and b"pong" in response.read())
    except (OSError, urllib.error.URLError):
        return False


def _write_config(local: Path, port: int) -> None:
    (local / "local.d").mkdir(parents=True)
    (local / "override.d").mkdir()
    unused_dns = _free_port()
    (local / "override.d" / "worker-normal.inc").write_text(f'bind_socket = "{HOST}:{port}";\ncount = 1;\n')
    for worker in ("controller", "proxy"):
        (local / "override.d" / f"worker-{worker}.inc").write_text(
            f'enabled = false;\ncount = 0;\nbind_socket = "{HOST}:{_free_port()}";\n'
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
    error: RuntimeError | None = None
    for _ in range(3):
        try:
            return _start_rspamd_once(folder)
        except RuntimeError as exc:
            error = exc
    raise RuntimeError(f"rspamd did not start: {error}")


def _start_rspamd_once(folder: Path) -> Rspamd:
    port = _free_port()
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
    deadline = time.monotonic() + START_TIMEOUT
    while not _ping(port):
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"{HOST}:{port} not ready in {START_TIMEOUT}s: {server.log()[-2000:]}")
        if process.poll() is not None:
            raise RuntimeError(f"rspamd on {HOST}:{port} (exit {process.returncode}): {server.log()[-3000:]}")
        time.sleep(0.1)
    return server


@pytest.fixture(scope="session")
def rspamd() -> Iterator[Rspamd]:
    """A real rspamd normal worker (host, port, address): GTUBE gives action reject; no network lookups."""
    if not os.access(RSPAMD, os.X_OK):
        pytest.skip("rspamd is not installed (make test installs the Debian peers)")
    folder = Path(tempfile.mkdtemp(prefix="relayfleet-rspamd-"))
    server = start_rspamd(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
