"""What the policy engine tests hand the engine: session facts, a message and its envelope."""

from __future__ import annotations

import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from smtp_relay.config.spec import Listener
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.verdict import Facts
from tests.relay.policy.zones import CLIENT

LISTENER = Listener(name="smtp", port=2525)
EngineFactory = Callable[..., PolicyEngine]
"""The `make_engine` fixture (conftest.py): policy dict, spec= and engine keyword arguments."""
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def facts(client_ip: str = CLIENT, mail_from: str | None = None, rcpt: str | None = None, **kw: Any) -> Facts:
    return Facts(
        listener=LISTENER, client_ip=client_ip, helo=kw.pop("helo", "client.test"), mail_from=mail_from, rcpt=rcpt, **kw
    )


def message(body: str = "Hello Bob,\nthe report attached.\n", *, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@pass.spf.test>"
    msg["To"] = "bob@mail.test"
    msg["Subject"] = "Quarterly report"
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    msg["Message-ID"] = "<report-1@pass.spf.test>"
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0])
    return msg.as_bytes(policy=email.policy.SMTP)


def envelope(sender: str = "alice@pass.spf.test") -> Envelope:
    return Envelope(sender, ("bob@mail.test",), client_ip=CLIENT, helo="client.test")
