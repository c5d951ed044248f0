"""The `--dkim` targets of relay_vs_postfix: the relay signing with RSA-2048, and Postfix with the OpenDKIM
milter signing the same messages with the same key.

Both sign for the smtp-source sender's domain (`From: <from@example.com>`) with relaxed/relaxed and
From over-signed. Postfix hands every message to OpenDKIM over a loopback milter socket
(`smtpd_milters`, `non_smtpd_milters`; `milter_default_action = tempfail`, so a milter failure shows as
deferred mail, never as unsigned mail counted as signed); its CPU and memory are counted with Postfix's.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.common import BenchError
from bench.peers.opendkim import OpenDkimMilter, opendkim_available
from bench.peers.postfix import PostfixInstance, make_workdir
from bench.peers.smtp_sink import SmtpSink

SELECTOR = "bench"


class DkimKeyFile:
    """A fresh RSA-2048 key in a private folder, shared by both signing targets."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.folder = Path(tempfile.mkdtemp(prefix="bench-dkim-"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.path = self.folder / "dkim.pem"
        self.path.write_bytes(self.pem)
        self.path.chmod(0o600)

    def relay_launcher(self) -> list[str]:
        """The command prefix that runs `smtp-relay` signing for the domain (see bench/dkim_relay.py)."""
        return [
            sys.executable, "-m", "bench.dkim_relay", "--dkim-domain", self.domain,
            "--dkim-selector", SELECTOR, "--dkim-key", str(self.path), "--",
        ]  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PostfixDkimTarget:
    """Stock Postfix (fsync before 250) with OpenDKIM signing as its milter, relaying to the sink."""

    name = "postfix+dkim"

    def __init__(self, sink: SmtpSink, key: DkimKeyFile) -> None:
        if not opendkim_available():
            raise BenchError("--dkim needs the opendkim package: run `make peers`")
        workdir = make_workdir()
        (workdir / "opendkim").mkdir()
        self.milter = OpenDkimMilter(workdir / "opendkim", domain=key.domain, selector=SELECTOR, key_pem=key.pem)
        milter = self.milter.address
        self.instance = PostfixInstance(
            workdir,
            relayhost=(sink.host, sink.port),
            main_cf={
                "smtpd_milters": milter,
                "non_smtpd_milters": milter,
                "milter_default_action": "tempfail",
                "milter_protocol": "6",
            },
        )
        self.host, self.port = self.instance.host, self.instance.port

    def start(self) -> None:
        self.milter.start()
        self.instance.start()

    def stop(self) -> None:
        self.instance.stop()
        self.milter.stop()
        shutil.rmtree(self.instance.workdir, ignore_errors=True)

    def root_pids(self) -> list[int]:
        master, milter = self.instance.master_pid(), self.milter.pid
        if master is None or milter is None:
            raise BenchError(f"postfix+dkim is not running:\n{self.instance.log_tail()}")
        return [master, milter]


_SIGNED = re.compile(r"^smtp_relay_dkim_signed_messages_total\{[^}]*\} (\S+)$", re.MULTILINE)


def relay_signed(http_port: int) -> float:
    """How many signatures the relay on `http_port` has made (its /metrics), all domains and algorithms."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        raise BenchError(f"relay metrics unreadable: {exc}") from None
    return sum(float(value) for value in _SIGNED.findall(text))
