"""OpenDKIM (Debian's `opendkim`, 2.11) as an independent DKIM verifier for tests and as Postfix's signing
milter in the benchmark.

Facts checked here (opendkim 2.11.0~beta2, Debian 12, as root, no syslog):

* `opendkim-testmsg` verifies through the system resolver (/etc/resolv.conf, port 53 only): it cannot be
  pointed at a test nameserver on another port. `opendkim -x CONF -t FILE` verifies in test mode with the
  daemon's configuration, whose `ResolverConfiguration` names an Unbound configuration file: a
  `stub-zone` with `stub-addr: 127.0.0.1@PORT` sends the key lookups to the tests' nsd.
* Unbound answers names under `test.` (and the other RFC 6761 names) itself with NXDOMAIN unless the
  configuration says `local-zone: "test." nodefault`; OpenDKIM then reports "key not found in DNS".
* Test mode exits 0 whatever the verdict. With `-vvv` and `AlwaysAddARHeader yes` it prints the
  Authentication-Results header it would add, one `dkim=` result per signature (RSA and Ed25519 both:
  this build verifies ed25519-sha256, RFC 8463); that is what `verify_message` parses.
* As a milter (`-f -x CONF`, `Socket inet:PORT@127.0.0.1`, `Mode s`) it signs mail from `InternalHosts`
  (default 127.0.0.1) for `Domain` with `KeyFile`. It refuses a key in a folder others may write (/tmp
  and so every temporary folder) unless `RequireSafeKeys no`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.peers.ports import HOST, free_port

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
_RESULT = re.compile(
    r"dkim=(?P<result>\w+)(?: reason=\"(?P<reason>[^\"]*)\")?(?: \([^)]*\))? header\.d=(?P<domain>\S+)"
    r"[^;]*? header\.a=(?P<algorithm>\S+) header\.s=(?P<selector>[^\s;]+)"
)
"""One `dkim=` result of the Authentication-Results header that test mode prints, e.g. ``dkim=pass
(2048-bit key; unprotected) header.d=example.test header.i=@example.test header.a=rsa-sha256 header.s=s1``."""


def opendkim_available() -> bool:
    return os.access(OPENDKIM, os.X_OK)


@dataclass(frozen=True)
class DkimVerdict:
    """OpenDKIM's verdict on one signature of a message."""

    result: str
    """pass, fail, neutral, ... (RFC 8601 dkim results)."""
    domain: str
    selector: str
    algorithm: str
    reason: str = ""


def write_resolver_config(folder: Path, zones: Iterable[str], nameserver: tuple[str, int]) -> Path:
    """An Unbound configuration sending the lookups of `zones` to `nameserver` (host, port) and nowhere else."""
    lines = ["server:", "  do-not-query-localhost: no", '  module-config: "iterator"']
    tlds = sorted({zone.rstrip(".").rpartition(".")[2] for zone in zones})
    lines += [f'  local-zone: "{tld}." nodefault' for tld in tlds]
    for zone in zones:
        lines += ["stub-zone:", f'  name: "{zone.rstrip(".")}."', f"  stub-addr: {nameserver[0]}@{nameserver[1]}"]
    path = folder / "unbound.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class OpenDkimVerifier:
    """Verifies messages with OpenDKIM's test mode, its key lookups sent to a test nameserver."""

    def __init__(self, folder: Path, zones: Iterable[str], nameserver: tuple[str, int]) -> None:
        self.folder = folder
        resolver = write_resolver_config(folder, zones, nameserver)
        self.config = folder / "opendkim.conf"
        self.config.write_text(
            f"Mode v\nResolverConfiguration {resolver}\nSyslog no\nAlwaysAddARHeader yes\nDNSTimeout 5\n"
        )

    def verify_message(self, message: bytes) -> list[DkimVerdict]:
        """One verdict per DKIM-Signature of `message` (empty when it has none)."""
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".eml") as file:
            file.write(message)
            file.flush()
            proc = subprocess.run(
                [OPENDKIM, "-x", str(self.config), "-vvv", "-t", file.name],
                capture_output=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"opendkim -t failed ({proc.returncode}): {output}")
        return [
            DkimVerdict(m["result"], m["domain"], m["selector"], m["algorithm"], m["reason"] or "")
            for m in _RESULT.finditer(output)
        ]


class OpenDkimMilter:
    """OpenDKIM as a signing milter on a loopback port (Postfix's `smtpd_milters = inet:HOST:PORT`)."""

    def __init__(self, folder: Path, *, domain: str, selector: str, key_pem: bytes) -> None:
        self.folder = folder
        self.port = free_port()
        key = folder / "dkim.key"
        key.write_bytes(key_pem)
        key.chmod(0o600)
        self.config = folder / "opendkim.conf"
        self.config.write_text(
            "Mode s\n"
            f"Socket inet:{self.port}@{HOST}\n"
            f"Domain {domain}\nSelector {selector}\nKeyFile {key}\n"
            "Canonicalization relaxed/relaxed\nOversignHeaders From\n"
            "Syslog no\nUMask 007\nSubDomains yes\n"
            "RequireSafeKeys no\n"  # the throwaway key lives under /tmp, which others may write
            f"PidFile {folder / 'opendkim.pid'}\n"
        )
        self.log = folder / "opendkim.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The milter address as Postfix takes it."""
        return f"inet:{HOST}:{self.port}"

    def start(self, timeout: float = 10.0) -> OpenDkimMilter:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [OPENDKIM, "-f", "-x", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"opendkim exited ({self._proc.returncode}): {self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"opendkim not listening on {HOST}:{self.port} after {timeout}s")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
