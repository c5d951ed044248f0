"""One mail transaction over a set-up connection, and the remote server's replies as outcomes.

The result is one `Outcome` per recipient, taken from the server's own replies, so the scheduler can
bounce exactly the refused recipients and retry exactly the deferred ones: 5xx is permanent, 4xx,
anything odd and every connection-level trouble is temporary.
"""

from __future__ import annotations

from smtp_relay.delivery.connection import Connection, HostFailed
from smtp_relay.delivery.pipelining import ConnectionBroken, UnsafeAddress, path_command, transact
from smtp_relay.model.envelope import Envelope, Outcome, OutcomeKind


class StaleConnection(Exception):
    """The connection died before MAIL FROM was answered (a pooled connection the server had closed):
    the server took nothing it confirmed, so the transaction is tried once more on a new connection."""


def reply_outcome(code: int, message: str, remote: str) -> Outcome:
    """5xx is permanent; 4xx and anything odd (no code, a 2xx where a 354 was due) are temporary."""
    if 500 <= code < 600:
        return Outcome.permanent(code, message, remote)
    return Outcome.temporary(code, message, remote)


async def run_transaction(
    conn: Connection,
    envelope: Envelope,
    data: bytes,
    recipients: list[str],
    timeout: float,  # noqa: ASYNC109 (per-reply budget, as RFC 5321 4.5.3.2 sets one per command)
) -> dict[str, Outcome]:
    """MAIL, RCPT each, DATA (pipelined where offered): outcomes from the server's own replies.

    Raises StaleConnection if the connection is gone before MAIL is answered (nothing was
    confirmed), HostFailed when the host cannot take this message at all (no SMTPUTF8).
    """
    smtp, remote = conn.smtp, conn.remote
    options: list[str] = []
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(data)}")
    if envelope.body_8bit and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    encoding = "ascii"
    if envelope.smtputf8:
        if not smtp.supports_extension("smtputf8"):
            raise HostFailed(Outcome.permanent(553, "5.6.7 the server does not support SMTPUTF8", remote))
        options.append("SMTPUTF8")
        encoding = "utf-8"
    try:
        mail = path_command(b"MAIL FROM", envelope.mail_from, options, encoding)
    except UnsafeAddress as exc:
        return dict.fromkeys(recipients, Outcome.permanent(553, f"5.1.7 bad sender address: {exc}", remote))
    outcomes: dict[str, Outcome] = {}
    sent: list[str] = []
    commands: list[bytes] = []
    for recipient in recipients:
        try:
            commands.append(path_command(b"RCPT TO", recipient, (), encoding))
        except UnsafeAddress as exc:
            outcomes[recipient] = Outcome.permanent(553, f"5.1.3 bad recipient address: {exc}", remote)
        else:
            sent.append(recipient)
    if not sent:
        return outcomes
    try:
        result = await transact(
            conn.reader,
            mail,
            commands,
            data,
            pipelining=conn.pipelining,
            chunking=smtp.supports_extension("chunking"),
            timeout=timeout,
        )
    except ConnectionBroken as exc:
        smtp.close()
        if not exc.replies:
            raise StaleConnection(exc.reason) from None
        if not exc.replies[0].positive:  # MAIL refused, then the server hung up (a 421): its reply is the outcome
            outcomes.update(dict.fromkeys(sent, reply_outcome(exc.replies[0].code, exc.replies[0].text, remote)))
            return outcomes
        lost = Outcome.temporary(0, f"4.4.2 {exc.reason}", remote)
        for recipient, reply in zip(sent, exc.replies[1:], strict=False):
            if not reply.positive:
                outcomes[recipient] = reply_outcome(reply.code, reply.text, remote)
        refusal = next((r for r in exc.replies[1 + len(sent) :] if r.code >= 400), None)
        if refusal is not None:  # DATA or the message refused before the hang-up (421 at DATA or ".")
            lost = reply_outcome(refusal.code, refusal.text, remote)
        for recipient in recipients:
            outcomes.setdefault(recipient, lost)
        return outcomes
    if not result.mail.positive:
        await conn.reset()
        outcomes.update(dict.fromkeys(sent, reply_outcome(result.mail.code, result.mail.text, remote)))
        return outcomes
    accepted: list[str] = []
    for recipient, reply in zip(sent, result.rcpts, strict=True):
        if reply.positive:
            accepted.append(recipient)
        else:
            outcomes[recipient] = reply_outcome(reply.code, reply.text, remote)
    if result.delivered:
        assert result.done is not None
        outcomes.update(dict.fromkeys(accepted, Outcome.delivered(remote, result.done.text)))
        return outcomes
    await conn.reset()
    refusal = result.done or result.data
    if accepted and refusal is not None:
        outcomes.update(dict.fromkeys(accepted, reply_outcome(refusal.code, refusal.text, remote)))
    return outcomes


def combined_failure(failures: list[Outcome]) -> Outcome:
    """Permanent only when every host said so for good; any temporary trouble keeps the mail queued."""
    if not failures:
        return Outcome.temporary(0, "4.4.0 no host to deliver to")
    if all(f.kind is OutcomeKind.PERMANENT for f in failures):
        return failures[-1]
    return [f for f in failures if f.kind is not OutcomeKind.PERMANENT][-1]
