"""The mail transaction verbs: MAIL, RCPT and DATA (RFC 5321 3.3), with ESMTP parameters and admission.

MAIL and RCPT ask the session's admission checks first (relay permission: never an open relay), then
the policy chain. DATA is read by the chunked reader (data_reader); a message without bare CR/LF or
NUL, within the size limit and not looping goes to `handoff`.
"""

from __future__ import annotations

from smtp_relay.cleanup.received import MAX_RECEIVED, count_received
from smtp_relay.policy.verdict import Action, Verdict
from smtp_relay.smtp.address import AddressError, parse_path
from smtp_relay.smtp.data_reader import DataProblem, read_data
from smtp_relay.smtp.handoff import hand_off
from smtp_relay.smtp.state import SessionState

_DATA_PROBLEM_REPLIES = {
    DataProblem.TOO_BIG: "552 5.3.4 Message size exceeds fixed maximum message size",
    DataProblem.BARE_CR_LF: "550 5.6.0 Bare CR or LF not allowed in message data, use CRLF",
    DataProblem.NUL: "550 5.6.0 NUL not allowed in message data",
}


class MailTransactionCommands(SessionState):
    """MAIL FROM, RCPT TO and DATA; the transaction state they fill lives in SessionState."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if self._relay.draining:
            self._relay.metrics.rejected.labels(reason="draining").inc()
            await self._hang_up("421 4.3.2 Service shutting down")
            return
        if await self._out_of_sequence("HELO"):
            return
        if self._mail_from is not None:
            await self._error("503 5.5.1 Nested MAIL command", "sequence")
            return
        try:
            path = parse_path(arg or "", keyword="FROM:", allow_null=True)
        except AddressError as exc:
            await self._error(f"501 5.5.4 {exc}", "syntax")
            return
        params = dict(path.params)
        if params and not self.session.extended_smtp:
            await self._error("501 5.5.4 Parameters need EHLO", "syntax")
            return
        body = params.pop("BODY", "7BIT")
        smtputf8 = params.pop("SMTPUTF8", False)
        size_text = params.pop("SIZE", None)
        params.pop("AUTH", None)  # RFC 4954 5: accepted, and ignored (we do not trust other MTAs' AUTH=)
        if body not in ("7BIT", "8BITMIME") or smtputf8 not in (False, True):
            await self._error("501 5.5.4 Bad BODY or SMTPUTF8 parameter", "syntax")
            return
        if size_text is not None and (not isinstance(size_text, str) or not size_text.isdigit()):
            await self._error("501 5.5.4 Bad SIZE parameter", "syntax")
            return
        if params:
            await self._error(f"555 5.5.4 Unsupported parameter {next(iter(params))}", "syntax")
            return
        if not smtputf8 and not path.address.isascii():
            await self._error("553 5.6.7 Non-ASCII address needs SMTPUTF8", "syntax")
            return
        size = int(size_text) if isinstance(size_text, str) else None
        facts = self._facts(mail_from=path.address, declared_size=size)
        verdict = self._setup.admission.on_mail(facts).verdict
        if not verdict.refuses and self._relay.policy is not None:
            verdict = await self._relay.policy.on_mail(facts)
        if verdict.refuses:
            await self._refuse(verdict, f"MAIL from=<{path.address}>")
            return
        self._mail_from = path.address
        self._smtputf8 = bool(smtputf8)
        self._body_8bit = body == "8BITMIME"
        self._declared_size = size
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._out_of_sequence("MAIL"):
            return
        try:
            path = parse_path(arg or "", keyword="TO:", allow_null=False)
        except AddressError as exc:
            await self._error(f"501 5.5.4 {exc}", "syntax")
            return
        if path.params:
            await self._error(f"555 5.5.4 Unsupported parameter {next(iter(path.params))}", "syntax")
            return
        if not self._smtputf8 and not path.address.isascii():
            await self._error("553 5.6.7 Non-ASCII address needs SMTPUTF8", "syntax")
            return
        facts = self._facts(rcpt=path.address)
        verdict = self._setup.admission.on_rcpt(facts).verdict  # relay permission first: never an open relay
        if not verdict.refuses and self._relay.policy is not None:
            verdict = await self._relay.policy.on_rcpt(facts)
        if verdict.refuses:
            await self._refuse(verdict, f"RCPT to=<{path.address}>")
            return
        self._rcpts.append(path.address)
        await self.push("250 2.1.5 Ok")

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._out_of_sequence("RCPT"):
            return
        if arg:
            await self._error("501 5.5.4 Syntax: DATA", "syntax")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        result = await read_data(self._reader, self._setup.max_size)
        self._reset_timeout()
        if result.problem is not None:
            reply = _DATA_PROBLEM_REPLIES[result.problem]
            await self._refuse(
                Verdict(Action.REJECT, int(reply[:3]), reply[4:9], reply[10:], result.problem.value),
                f"DATA size={result.size}",
            )
            self._reset_transaction()
            return
        if count_received(result.content) > MAX_RECEIVED:
            await self._refuse(
                Verdict(Action.REJECT, 554, "5.4.6", "Routing loop: too many Received headers", "routing_loop"),
                f"DATA size={result.size}",
            )
            self._reset_transaction()
            return
        await hand_off(self, result.content)
        self._reset_transaction()
