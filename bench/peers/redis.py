"""Debian's real `redis-server` on a loopback port: the shared store of fleet-wide limits (tests, bench).

It runs in the foreground with persistence off (`--save ""`, no AOF), so a start is instant and a kill
leaves nothing behind; `stop()`/`kill()` then `start()` keep the port, so a test can take Redis away
mid-run and give it back. A password (`requirepass`, or an ACL user with `user`) and TLS (`tls-port`
with a certificate, key and CA in PEM files) are optional.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.peers.ports import HOST, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass(frozen=True)
class RedisTls:
    """PEM files of the server's certificate and key and of the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """One redis-server on 127.0.0.1; the same port across restarts."""

    def __init__(
        self,
        folder: Path,
        *,
        password: str | None = None,
        username: str | None = None,
        tls: RedisTls | None = None,
    ) -> None:
        self.folder = folder
        self.host = HOST
        self.port = free_port()
        self.password = password
        self.username = username
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_file = folder / "redis.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        cmd = [REDIS_SERVER, "--bind", self.host, "--save", "", "--appendonly", "no", "--daemonize", "no"]
        cmd += ["--dir", str(self.folder), "--logfile", str(self.log_file), "--protected-mode", "no"]
        if self.tls is not None:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            cmd += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            cmd += ["--tls-ca-cert-file", str(self.tls.ca)]
        else:
            cmd += ["--port", str(self.port)]
        if self.username is not None and self.password is not None:
            cmd += ["--user", "default", "off", "--user", self.username, "on", f">{self.password}", "~*", "+@all"]
        elif self.password is not None:
            cmd += ["--requirepass", self.password]
        return cmd

    def client(self) -> redis.Redis:
        """A synchronous client with the server's own credentials (for tests that look inside)."""
        kwargs: dict[str, object] = {}
        if self.tls is not None:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            socket_timeout=2,
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (again) and wait until it answers PING."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        self._proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server on {self.address} did not start: {log}")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed or unplugged Redis."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        if self.running:
            assert self._proc is not None
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
