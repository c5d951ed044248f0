"""Run the real `smtp-relay` console script as a child process, as an operator's pod would.

End-to-end tests kill it with SIGKILL, stop it with SIGTERM and restart it on the same spool, so
it must be a separate process, not a task in the test's event loop.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.peers.ports import free_port
from prometheus_client.parser import text_string_to_metric_families

RELAY_BIN = Path(sys.executable).with_name("smtp-relay")


def relay_manifest(spec: dict[str, Any], *secrets: dict[str, Any], name: str = "test") -> str:
    """A multi-document manifest: one SmtpRelay and its Secrets."""
    relay = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    return yaml.safe_dump_all([relay, *secrets], sort_keys=False)


@dataclass
class RelayProcess:
    """A relay child process with its manifest, spool and ports."""

    workdir: Path
    manifest: Path
    http_port: int
    extra_args: list[str] = field(default_factory=list)
    nofile: int | None = None
    """RLIMIT_NOFILE of the relay process (soft and hard), to make descriptor exhaustion reachable."""
    http_host: str = "127.0.0.1"
    """Where the admin API listens: a pod stand-in listens at its own loopback address on the admin port."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_token_file(self) -> Path:
        """The admin API's token, written before the first start (as the operator's Secret mount would be)."""
        return self.workdir / "admin-token"

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def log(self) -> Path:
        return self.workdir / "relay.log"

    def start(self, wait: bool = True) -> None:
        if not self.admin_token_file.exists():
            self.admin_token_file.write_text(secrets.token_urlsafe(32) + "\n")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(RELAY_BIN),
                    "run",
                    "-f",
                    str(self.manifest),
                    "--spool",
                    str(self.spool),
                    "--http-port",
                    str(self.http_port),
                    "--http-host",
                    self.http_host,
                    "--hostname",
                    "relay.test",
                    "--log-level",
                    "DEBUG",
                    "--admin-token-file",
                    str(self.admin_token_file),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if self.nofile is not None:  # prlimit(2) on the child: no code between fork and exec
            resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        if wait:
            self.wait_ready()

    def open_descriptors(self) -> int:
        """How many file descriptors the relay process holds now (its /proc/<pid>/fd)."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metric(self, name: str, **labels: str) -> float:
        """One sample of its /metrics (0.0 when absent, as prometheus_client reads an untouched child)."""
        status, text = self.http("/metrics")
        assert status == 200, text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_host}:{self.http_port}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"relay not ready after {timeout}s:\n{self.log.read_text()}")

    @property
    def admin_url(self) -> str:
        """Its admin API's base URL, as a peer names it in a drain's hand-off."""
        return f"http://{self.http_host}:{self.http_port}"

    def http(
        self, path: str, method: str = "GET", *, token: str | None = "", body: bytes | None = None
    ) -> tuple[int, str]:
        """One admin request with the relay's token ("" default; None: no Authorization header; or this token)."""
        request = urllib.request.Request(f"{self.admin_url}{path}", method=method, data=body)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token or self.admin_token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def queue(self) -> dict[str, Any]:
        status, body = self.http("/queue")
        assert status == 200, body
        return dict(json.loads(body))

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything that was not already durable."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Any]:
    """Make relays from a spec dict (plus Secret documents); all are killed at teardown."""
    made: list[RelayProcess] = []

    def make(
        spec: dict[str, Any],
        *secrets: dict[str, Any],
        start: bool = True,
        args: list[str] | None = None,
        grace: float = 10.0,
        nofile: int | None = None,
        http_host: str = "127.0.0.1",
        http_port: int | None = None,
    ) -> RelayProcess:
        workdir = tmp_path / f"relay{len(made)}"
        workdir.mkdir()
        manifest = workdir / "relay.yaml"
        manifest.write_text(relay_manifest(spec, *secrets))
        port = http_port if http_port is not None else free_port()
        relay = RelayProcess(workdir, manifest, port, ["--grace", str(grace), *(args or [])], nofile, http_host)
        made.append(relay)
        if start:
            relay.start()
        return relay

    yield make
    for relay in made:
        relay.stop()
