"""Send one test message to the relay that `make run` started, then show where the relay captured it.

Standard library only, so it works right after `make run`, before any Debian package is installed:

    python3 examples/send_test_message.py [--port 2525] [--spool var/spool] [--to ADDRESS] [--remote]
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import smtplib
import sys
import time
from email.message import EmailMessage
from pathlib import Path


def send(host: str, port: int, recipient: str) -> str:
    """Send one message; return the relay's reply to the end of DATA (it names the queue id)."""
    message = EmailMessage()
    message["From"] = "me@localhost.test"
    message["To"] = recipient
    message["Subject"] = "hello from relayfleet's quick start"
    message["Date"] = email.utils.formatdate(localtime=True)  # without them the builtin spam rules add 2 points
    message["Message-ID"] = email.utils.make_msgid(domain="localhost.test")
    message.set_content("If you can read this in var/spool/capture/new/, the relay took and kept it.\n")
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("quickstart.local")
        client.mail("me@localhost.test")
        client.rcpt(recipient)
        code, text = client.data(message.as_bytes(policy=email.policy.SMTP))  # CRLF line ends, as SMTP wants
        if code != 250:
            raise SystemExit(f"the relay refused the message: {code} {text.decode(errors='replace')}")
        return f"{code} {text.decode(errors='replace')}"


def wait_for_capture(folder: Path, before: set[Path], timeout: float) -> Path | None:
    """The first file that appears in the capture Maildir's new/ folder, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(folder.glob("*")) - before if folder.is_dir() else set()
        if new:
            return sorted(new)[0]
        time.sleep(0.05)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--spool", type=Path, default=Path("var/spool"), help="the relay's --spool (make run's)")
    parser.add_argument("--to", default="someone@example.com")
    parser.add_argument(
        "--remote",
        action="store_true",
        help="the relay's spool is elsewhere (a pod behind kubectl port-forward): send only",
    )
    args = parser.parse_args(argv)
    folder = args.spool / "capture" / "new"
    before = set(folder.glob("*")) if folder.is_dir() else set()
    try:
        reply = send(args.host, args.port, args.to)
    except OSError as exc:
        print(f"cannot reach the relay on {args.host}:{args.port} ({exc}): is `make run` running?", file=sys.stderr)
        return 1
    print(f"relay answered: {reply}")
    if args.remote:
        return 0
    captured = wait_for_capture(folder, before, timeout=10)
    if captured is None:
        print(f"nothing appeared in {folder} yet (is this the spool of the relay you sent to?)", file=sys.stderr)
        return 1
    print(f"captured: {captured}\n")
    print(captured.read_text(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
