"""`helm test`: send one message through the example relay and wait until a relay pod delivered it to capture.

Standard library only (it runs in the relay image). Arrival is read from the pods' /metrics on the admin port
(public, no token): smtp_relay_delivered_recipients_total{route="capture"} of one pod rises above what it was
before the message was sent (a pod not seen before counts from zero). Exit 0 when it arrived, 1 with the
reason otherwise.
"""

from __future__ import annotations

import argparse
import re
import smtplib
import socket
import sys
import time
import urllib.request
import uuid
from email.message import EmailMessage

DELIVERED = re.compile(r'^smtp_relay_delivered_recipients_total\{[^}]*route="capture"[^}]*\}\s+([0-9.e+-]+)\s*$', re.M)


def pod_addresses(name: str, port: int) -> set[str]:
    """Every address behind a headless Service name (empty while DNS has none)."""
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return set()
    return {str(info[4][0]) for info in infos}


def delivered(address: str, port: int) -> float | None:
    """The pod's capture deliveries so far, or None when its /metrics does not answer."""
    host = f"[{address}]" if ":" in address else address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    return sum(float(value) for value in DELIVERED.findall(text))


def snapshot(pods: str, port: int) -> dict[str, float]:
    counts = {address: delivered(address, port) for address in pod_addresses(pods, port)}
    return {address: count for address, count in counts.items() if count is not None}


def send(smtp: str, recipient: str, message_id: str) -> str:
    host, _, port = smtp.rpartition(":")
    message = EmailMessage()
    message["From"] = "helm-test@relayfleet.invalid"
    message["To"] = recipient
    message["Subject"] = "relayfleet helm test"
    message["Message-ID"] = message_id
    message.set_content("Sent by `helm test` to check that the example relay takes and delivers mail.\n")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.ehlo("helm-test.relayfleet.invalid")
        refused = client.send_message(message)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
    return message_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smtp", required=True, help="host:port of the relay's Service")
    parser.add_argument("--pods", required=True, help="the relay's headless Service name (<relay>-pods)")
    parser.add_argument("--admin-port", type=int, default=9025)
    parser.add_argument("--to", default="someone@example.com")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout

    before = snapshot(args.pods, args.admin_port)
    while not before and time.monotonic() < deadline:
        time.sleep(1)
        before = snapshot(args.pods, args.admin_port)
    if not before:
        print(f"FAIL: no relay pod behind {args.pods} answered /metrics on port {args.admin_port}", file=sys.stderr)
        return 1
    message_id = f"<{uuid.uuid4()}@helm-test.relayfleet.invalid>"
    while True:
        try:
            send(args.smtp, args.to, message_id)
            break
        except (OSError, smtplib.SMTPException) as exc:
            if time.monotonic() >= deadline:
                print(f"FAIL: the relay at {args.smtp} did not take the message: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    print(f"sent {message_id} to {args.smtp}: accepted with 250")
    while time.monotonic() < deadline:
        for address, count in snapshot(args.pods, args.admin_port).items():
            if count > before.get(address, 0.0):
                print(f"delivered to capture by the relay pod at {address} ({count:g} so far)")
                return 0
        time.sleep(1)
    print(f"FAIL: accepted, but no relay pod reported a capture delivery within {args.timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
