"""A real clamd on 127.0.0.1 with the project's own signature database (Debian ships none, nothing is downloaded).

The database holds two signatures for the EICAR anti-virus test file: an MD5 hash signature (.hdb,
matches the file exactly, also once clamd has decoded it from MIME or unpacked it from a zip) and a
body signature (.ndb, matches the EICAR marker anywhere). clamd appends `.UNOFFICIAL` to the names of
signatures that are not from its own signed databases. EICAR is assembled from pieces here, so that
this source file is not itself flagged by a scanner. clamd starts in about 0.15 s, so the fixture is
per session only to keep the suite's process count low.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.peers.ports import HOST, free_port

from tests.peers.daemon import Daemon, running, skip_unless_installed, start_retrying, wait_until_ready

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
START_TIMEOUT = 30.0
HASH_SIGNATURE = "Relayfleet.Test.EICAR"
BODY_SIGNATURE = "Relayfleet.Test.EICAR-Body"


def eicar() -> bytes:
    """The 68-byte EICAR test file, assembled so that no source file contains it verbatim."""
    parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-", "ANTIVIRUS-TEST-FILE!$H+H*"]
    return "".join(parts).encode("ascii")


@dataclass
class Clamd(Daemon):
    """A running clamd (`address` is what VirusSpec.address takes)."""

    name = "clamd"
    log_file = "clamd.log"


def write_database(folder: Path) -> None:
    """The project's signature database: one .hdb (MD5:size:name) and one .ndb (body, hex) signature."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = eicar()
    (folder / "relayfleet.hdb").write_text(f"{hashlib.md5(sample).hexdigest()}:{len(sample)}:{HASH_SIGNATURE}\n")
    marker = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
    (folder / "relayfleet.ndb").write_text(f"{BODY_SIGNATURE}:0:*:{marker.hex()}\n")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(64).startswith(b"PONG")
    except OSError:
        return False


def start_clamd(folder: Path, *, stream_max_length: str = "25M") -> Clamd:
    """Start clamd in the foreground on a free port, serving the project's database; wait for PONG.

    Retried on a fresh port when clamd exits at once: another process may take the probed port first.
    """
    write_database(folder / "db")
    return start_retrying("clamd", lambda: _start_clamd_once(folder, stream_max_length))


def _start_clamd_once(folder: Path, stream_max_length: str) -> Clamd:
    port = free_port()
    as_root = os.geteuid() == 0
    config = folder / "clamd.conf"
    config.write_text(
        f"DatabaseDirectory {folder / 'db'}\n"
        f"TCPSocket {port}\nTCPAddr {HOST}\n"
        "Foreground yes\nSelfCheck 0\n"
        f"LogFile {folder / 'clamd.log'}\nLogTime yes\n"
        f"PidFile {folder / 'clamd.pid'}\n"
        f"TemporaryDirectory {folder}\n"
        f"StreamMaxLength {stream_max_length}\nMaxThreads 4\n" + ("User clamav\n" if as_root else "")
    )
    if as_root:
        clamav = pwd.getpwnam("clamav")
        for path in (folder, folder / "db", *(folder / "db").iterdir(), config):
            os.chown(path, clamav.pw_uid, clamav.pw_gid)
    process = subprocess.Popen(
        [CLAMD, "--config-file", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Clamd(HOST, port, folder, process)
    wait_until_ready(server, lambda: _ping(port), START_TIMEOUT, interval=0.05)
    return server


@pytest.fixture(scope="session")
def clamd() -> Iterator[Clamd]:
    """A real clamd (host, port, address) that finds EICAR as Relayfleet.Test.EICAR[-Body].UNOFFICIAL."""
    with running(CLAMD, start_clamd) as server:
        yield server


@pytest.fixture
def clamd_factory() -> Iterator[Callable[..., Clamd]]:
    """Start extra clamds with other limits: `clamd_factory(stream_max_length="1K")`; stopped at teardown."""
    skip_unless_installed(CLAMD)
    with contextlib.ExitStack() as started:

        def start(*, stream_max_length: str = "25M") -> Clamd:
            return started.enter_context(
                running(CLAMD, lambda folder: start_clamd(folder, stream_max_length=stream_max_length))
            )

        yield start
