"""The hand-off at the end of DATA: trace header, the policy's last word, DKIM, then the spool (or the quarantine).

The message is committed through the `MessageSink` the server was given, so the listener never knows
how the queue stores it; the 250 goes out only once the sink has made the message durable.
"""

from __future__ import annotations

import asyncio
import logging
import time

from smtp_relay.cleanup.headers import prepend_headers
from smtp_relay.cleanup.received import received_header
from smtp_relay.model.envelope import Envelope
from smtp_relay.smtp.state import SessionState

log = logging.getLogger("smtp_relay.smtp")


async def hand_off(session: SessionState, content: bytes) -> None:
    """Queue the message of the session's transaction (or refuse or quarantine it) and reply."""
    assert session.session is not None
    now = time.time()
    user = session.auth_user()
    trace = received_header(
        helo=session.helo(),
        client_ip=session._client_ip,
        hostname=session.hostname,
        esmtp=session.session.extended_smtp,
        tls=session.is_secure(),
        auth=user is not None,
        utf8=session._smtputf8,
        now=now,
    )
    envelope = Envelope(
        mail_from=session._mail_from or "",
        rcpt_tos=tuple(session._rcpts),
        client_ip=session._client_ip,
        helo=session.helo(),
        auth_user=user,
        smtputf8=session._smtputf8,
        body_8bit=session._body_8bit,
        received_at=now,
    )
    message = trace + content
    relay = session._relay
    policy = relay.policy
    if policy is not None:
        decision = await policy.on_data(session._facts(), message, envelope)
        if decision.verdict.refuses:
            await session._refuse(decision.verdict, f"DATA size={len(message)}")
            return
        if decision.quarantine_reason is not None:
            held = await policy.quarantine(envelope, message, decision)
            log.info(
                "quarantined id=%s client=%s from=<%s> reason=%s",
                held,
                session._client_ip,
                envelope.mail_from,
                decision.quarantine_reason,
            )
            await session.push(f"250 2.0.0 Ok: queued as {held}")
            return
        if decision.add_headers:
            message = prepend_headers(message, decision.add_headers)
    signer = session._setup.signer
    if signer is not None:  # last: the signature covers the final headers
        message = await signer.sign_message(message, now=now)
    # Shielded: a client hanging up mid-commit must not leave a half-written spool entry behind.
    commit = asyncio.ensure_future(relay.sink(envelope, message))
    try:
        queue_id = await asyncio.shield(commit)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception(
            "sink failed client=%s from=<%s> rcpts=%d size=%d",
            session._client_ip,
            envelope.mail_from,
            len(envelope.rcpt_tos),
            len(message),
        )
        relay.metrics.rejected.labels(reason="sink_error").inc()
        await session.push("451 4.3.0 Temporary failure, try again later")
        return
    log.info(
        "queued id=%s client=%s listener=%s user=%s from=<%s> rcpts=%d size=%d",
        queue_id,
        session._client_ip,
        session._listener.name,
        user or "-",
        envelope.mail_from,
        len(envelope.rcpt_tos),
        len(message),
    )
    await session.push(f"250 2.0.0 Ok: queued as {queue_id}")
