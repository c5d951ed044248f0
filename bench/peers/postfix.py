"""A real Postfix instance in a private folder: an upstream peer in tests and the benchmark's reference.

Recipe checked here (Postfix 3.7, Debian 12, as root, no systemd, no syslog), per instance:

* its own config folder with main.cf and a minimal master.cf (no chroot: a chroot would need copies of
  /etc files inside the queue folder); the SMTP service line is `127.0.0.1:PORT inet n - n - - smtpd`;
* `queue_directory` and `data_directory` inside the instance folder (the pid file, master.lock and the
  private/public sockets live there, so instances never meet);
* `maillog_file` plus `maillog_file_prefixes` covering it (otherwise postfix refuses to start, silently
  without syslog) and a `postlog unix-dgram` service;
* a distinct `myhostname` per instance: Postfix refuses mail that would loop back to a server greeting
  with its own name, which two default-named instances in a chain would do;
* `mail_owner`, `setgid_group` and the default `meta_directory` (postfix-files) are shared safely; no
  `multi_instance_*` settings or `postmulti` are needed for `postfix -c DIR start|stop`;
* `postfix -c DIR set-permissions` then `postfix -c DIR start` work but cost about 2.5 s; creating the
  queue folders with the owners and modes of postfix-files and a `quick-start` file in the queue folder
  skips those checks, and the banner comes in about 0.3 s; stop is a SIGTERM to the master.

Durability is stock: cleanup fsyncs each queue file before smtpd answers 250, which is what the
benchmark compares the relay against. `fast_retry=True` only shortens retry timers for outage tests.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from bench.peers.ports import HOST, free_port
from bench.peers.smtp_sink import wait_for_banner

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
QUEUE_FOLDERS = ("maildrop", "incoming", "active", "deferred", "hold")
_PRIVATE_QUEUE_FOLDERS = (
    "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace",
)  # fmt: skip

# Services a relay-only instance needs; chroot off everywhere (column 5 "n").
_MASTER_CF = """\
{listen}  inet  n       -       n       -       {smtpd_limit}       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_FAST_RETRY = {
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "smtp_connect_timeout": "5s",
}


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], pgrp [2])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    """Running and not a zombie (pid 1 of a container may be slow to reap the daemonized master)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _process_group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None and fields[2] == str(pgid):
            members.append(int(entry))
    return members


class PostfixError(RuntimeError):
    """A postfix command failed; the message carries its output and the tail of the mail log."""


class PostfixInstance:
    """One private Postfix that relays everything it accepts from 127.0.0.0/8 to `relayhost`."""

    def __init__(
        self,
        workdir: Path,
        *,
        relayhost: tuple[str, int] | None,
        port: int | None = None,
        myhostname: str | None = None,
        fast_retry: bool = False,
        main_cf: Mapping[str, str] | None = None,
        smtpd_process_limit: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = port or free_port()
        self.config_dir = workdir / "etc"
        self.queue_dir = workdir / "queue"
        self.data_dir = workdir / "data"
        self.log = workdir / "maillog"
        self.myhostname = myhostname or f"pf-{uuid.uuid4().hex[:10]}.test"
        self.relayhost = relayhost
        params: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "myhostname": self.myhostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "syslog_name": self.myhostname.split(".")[0],
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(workdir),
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "relay_domains": "",
            "relayhost": f"[{relayhost[0]}]:{relayhost[1]}" if relayhost else "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
        }
        if fast_retry:
            params.update(_FAST_RETRY)
        params.update(main_cf or {})
        self.params = params
        self.smtpd_process_limit = smtpd_process_limit

    @property
    def address(self) -> str:
        """host:port of the SMTP listener."""
        return f"{self.host}:{self.port}"

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        main = "".join(f"{key} = {value}\n" for key, value in self.params.items())
        (self.config_dir / "main.cf").write_text(main)
        limit = "-" if self.smtpd_process_limit is None else str(self.smtpd_process_limit)
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(listen=self.address, smtpd_limit=limit))
        # Postfix re-reads a main.cf younger than about 2 s every 300 ms until it is older (a guard against
        # half-written files); dating the files back saves those 2 s per start and reload.
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def _run(self, *args: str, tool: str = POSTFIX, timeout: float = 60.0) -> str:
        # `script` gives postfix a terminal: without syslog, that is the only place it reports fatal errors.
        command = " ".join([tool, "-c", str(self.config_dir), *args])
        proc = subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        output = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
        if proc.returncode != 0:
            raise PostfixError(f"{command} failed ({proc.returncode}):\n{output}\n--- maillog ---\n{self.log_tail()}")
        return output

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _prepare_folders(self) -> None:
        # What `postfix set-permissions` and the start-up integrity check would do (per postfix-files),
        # done directly: those two cost about 2.5 s per instance here; this costs milliseconds.
        owner = pwd.getpwnam(self.params.get("mail_owner", "postfix"))
        group = grp.getgrnam(self.params.get("setgid_group", "postdrop"))
        layout = [(self.data_dir, owner.pw_uid, 0, 0o700), (self.queue_dir, 0, 0, 0o755)]
        layout += [(self.queue_dir / name, owner.pw_uid, 0, 0o700) for name in _PRIVATE_QUEUE_FOLDERS]
        layout += [
            (self.queue_dir / "maildrop", owner.pw_uid, group.gr_gid, 0o730),
            (self.queue_dir / "public", owner.pw_uid, group.gr_gid, 0o710),
            (self.queue_dir / "pid", 0, 0, 0o755),
        ]
        for folder, uid, gid, mode in layout:
            folder.mkdir(exist_ok=True)
            os.chown(folder, uid, gid)
            folder.chmod(mode)
        (self.queue_dir / "quick-start").touch()  # postfix-script then skips its slow checks

    def start(self, timeout: float = 20.0) -> PostfixInstance:
        """Write the configuration and folders, start the master and wait for the SMTP banner (about 0.3 s)."""
        self._write_config()
        self._prepare_folders()
        self._run("start")
        try:
            wait_for_banner(self.host, self.port, timeout)
        except TimeoutError as exc:
            raise PostfixError(f"{exc}\n--- maillog ---\n{self.log_tail()}") from None
        return self

    def master_pid(self) -> int | None:
        """The master process id (all other Postfix processes of this instance are its children)."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def pids(self) -> list[int]:
        """The master and every process it started (the master leads their process group)."""
        master = self.master_pid()
        return [] if master is None else [pid for pid in _process_group(master) if _alive(pid)]

    @property
    def running(self) -> bool:
        return self.master_pid() is not None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the master (what `postfix stop` does, minus its 1 s polling); wait until all are gone.

        The master passes the signal to its process group; queued mail stays for a later start().
        """
        master = self.master_pid()
        if master is None:
            return
        group = _process_group(master)
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in group):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master, signal.SIGKILL)
                break
            time.sleep(0.01)

    def reconfigure(self, **params: str) -> None:
        """Change main.cf parameters and reload, e.g. reconfigure(relayhost="[127.0.0.1]:2526")."""
        self.params.update(params)
        self._write_config()
        if self.running:
            self._run("reload")

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now (`postqueue -f`)."""
        self._run("-f", tool=shutil.which("postqueue") or "/usr/sbin/postqueue")

    def queue_files(self) -> list[Path]:
        """Queue files in maildrop, incoming, active, deferred and hold (deferred has hashed subfolders)."""
        found: list[Path] = []
        for folder in QUEUE_FOLDERS:
            for root, _dirs, files in os.walk(self.queue_dir / folder):
                found.extend(Path(root, name) for name in files)
        return found

    def queue_count(self) -> int:
        """Messages still queued (not yet delivered or bounced)."""
        return len(self.queue_files())

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Block until the queue is empty."""
        deadline = time.monotonic() + timeout
        while (left := self.queue_count()) > 0:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{left} messages still queued after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)


def make_workdir() -> Path:
    """A private folder outside pytest's 0700 temp root, so Postfix's unprivileged daemons can work in it."""
    folder = Path(tempfile.mkdtemp(prefix="postfix-"))
    folder.chmod(0o755)
    return folder


def postfix_available() -> bool:
    return os.geteuid() == 0 and os.access(POSTFIX, os.X_OK) and shutil.which("script") is not None
