"""RFC 2920 pipelined transactions and BDAT: the pure helpers, and real upstreams.

The proof that commands really are pipelined is a server that answers nothing until it has read
DATA (or BDAT LAST): a client that waits for each reply before the next command deadlocks against it.
The reply reader's own tests are in test_reply_reader.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import uvloop
from bench.peers.smtp_sink import SinkBehaviour

from smtp_relay.delivery.pipelining import UnsafeAddress, path_command, stuff
from smtp_relay.model.envelope import Outcome, OutcomeKind
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SinkFactory
from tests.relay.delivery.conftest import body, deliverer, message, smarthost


def test_stuff_doubles_leading_dots_and_terminates() -> None:
    assert stuff(b".a\r\nb\r\n..c\r\n") == b"..a\r\nb\r\n...c\r\n.\r\n"
    assert stuff(b"no final line end") == b"no final line end\r\n.\r\n"
    assert stuff(b"") == b".\r\n"


def test_stuff_normalizes_bare_line_ends_before_stuffing() -> None:
    assert stuff(b"a\n.b\rc\r\n") == b"a\r\n..b\r\nc\r\n.\r\n"


def test_path_command_refuses_what_would_inject_a_command() -> None:
    assert path_command(b"MAIL FROM", "a@b.test", ["SIZE=10"], "ascii") == b"MAIL FROM:<a@b.test> SIZE=10\r\n"
    assert path_command(b"MAIL FROM", "", [], "ascii") == b"MAIL FROM:<>\r\n"
    assert path_command(b"RCPT TO", '"x y"@b.test', [], "ascii") == b'RCPT TO:<"x y"@b.test>\r\n'
    with pytest.raises(UnsafeAddress, match="control character"):
        path_command(b"RCPT TO", "a@b.test>\r\nRCPT TO:<evil@x.test", [], "ascii")
    with pytest.raises(UnsafeAddress, match="SMTPUTF8"):
        path_command(b"RCPT TO", "\u00fcser@b.test", [], "ascii")
    assert path_command(b"RCPT TO", "\u00fcser@b.test", [], "utf-8") == "RCPT TO:<\u00fcser@b.test>\r\n".encode()


class WithholdingUpstream:
    """An upstream that answers nothing until it has read the whole transaction, then every reply at once.

    Why an in-process fake: smtp-sink, Postfix and aiosmtpd answer each command as it arrives, so a
    client that waits for every reply works against them too. Against this one such a client
    deadlocks, which is the proof that the commands really are pipelined; smtp-sink offers no
    CHUNKING either. With `chunking` it offers CHUNKING and reads up to the end of `BDAT n LAST`.
    """

    def __init__(self, *, chunking: bool, refused: Mapping[str, str]) -> None:
        self.chunking = chunking
        self.refused = refused
        """recipient -> reply line instead of 250."""
        self.transcript = bytearray()
        """Everything the client sent after EHLO."""
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 withholding ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(
            b"250-withholding\r\n250-PIPELINING\r\n%s250 SIZE 100000\r\n" % (b"250-CHUNKING\r\n" * self.chunking)
        )
        if self.chunking:
            commands = await reader.readuntil(b" LAST\r\n")
            size = int(commands.rsplit(b"BDAT ", 1)[1].split()[0])
            self.transcript += commands + await reader.readexactly(size)
            writer.write(self._envelope_replies(commands) + b"250 2.0.0 chunks taken\r\n")
        else:
            commands = await reader.readuntil(b"DATA\r\n")
            self.transcript += commands
            writer.write(self._envelope_replies(commands) + b"354 go\r\n")
            self.transcript += await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 2.0.0 taken\r\n")
        self.transcript += await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        await writer.drain()
        writer.close()

    def _envelope_replies(self, commands: bytes) -> bytes:
        """250 for MAIL, then one reply per RCPT: 250 or the refusal given for that recipient."""
        replies = [b"250 sender ok\r\n"]
        for line in commands.split(b"\r\n"):
            if line.startswith(b"RCPT TO:<"):
                recipient = line[len(b"RCPT TO:<") : line.index(b">")].decode()
                replies.append(self.refused.get(recipient, "250 rcpt ok").encode() + b"\r\n")
        return b"".join(replies)


WithholdingFactory = Callable[..., Awaitable[WithholdingUpstream]]


@pytest.fixture
async def withholding_upstream_factory() -> AsyncIterator[WithholdingFactory]:
    """Start WithholdingUpstreams on free ports: `await factory(chunking=False, refused={})`."""
    servers: list[asyncio.Server] = []

    async def start(*, chunking: bool = False, refused: Mapping[str, str] | None = None) -> WithholdingUpstream:
        upstream = WithholdingUpstream(chunking=chunking, refused=refused or {})
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    yield start
    for server in servers:
        server.close()


async def test_commands_are_pipelined_up_to_data(
    withholding_upstream_factory: WithholdingFactory, tmp_path: Path
) -> None:
    upstream = await withholding_upstream_factory()
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port)]}}, tmp_path, timeout=3.0)
    rcpts = ["a@example.test", "b@example.test"]
    try:
        outcomes = await d.deliver(message("s@sender.test", *rcpts), body(), rcpts)
    finally:
        await d.close()
    assert {o.kind for o in outcomes.values()} == {OutcomeKind.DELIVERED}, outcomes
    assert outcomes["a@example.test"].message == "2.0.0 taken"
    assert upstream.transcript.startswith(
        b"MAIL FROM:<s@sender.test> SIZE=%d\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
        % len(body())
    )
    assert b"\r\n..leading dot line\r\n.\r\n" in upstream.transcript
    assert upstream.transcript.endswith(b"QUIT\r\n")


async def test_chunking_sends_the_whole_transaction_in_one_write(
    withholding_upstream_factory: WithholdingFactory, tmp_path: Path
) -> None:
    """With PIPELINING and CHUNKING, MAIL, RCPT and `BDAT n LAST` with the unstuffed message go out
    together: the upstream reads the whole transaction before it answers anything."""
    upstream = await withholding_upstream_factory(
        chunking=True, refused={"gone@example.test": "550 5.1.1 no such user"}
    )
    d = deliverer({"default": {"smarthosts": [smarthost(upstream.port)]}}, tmp_path, timeout=3.0)
    rcpts = ["a@example.test", "gone@example.test"]
    try:
        outcomes = await d.deliver(message("s@sender.test", *rcpts), body(), rcpts)
    finally:
        await d.close()
    assert outcomes["a@example.test"].kind is OutcomeKind.DELIVERED, outcomes
    assert outcomes["a@example.test"].message == "2.0.0 chunks taken"
    assert outcomes["gone@example.test"].kind is OutcomeKind.PERMANENT and outcomes["gone@example.test"].code == 550
    assert bytes(upstream.transcript) == (
        b"MAIL FROM:<s@sender.test> SIZE=%d\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<gone@example.test>\r\n"
        b"BDAT %d LAST\r\n%s"
        b"QUIT\r\n" % (len(body()), len(body()), body())
    )  # the message as it is: ".leading dot line" not doubled, no terminating dot


@pytest.mark.parametrize("pipelining", [True, False])
async def test_real_smtp_sink_with_and_without_pipelining(
    pipelining: bool, smtp_sink_factory: SinkFactory, tmp_path: Path
) -> None:
    """smtp-sink checks the protocol strictly; without PIPELINING each command waits for its reply."""
    sink = smtp_sink_factory(behaviour=SinkBehaviour(pipelining=pipelining))
    d = deliverer({"default": {"smarthosts": [smarthost(sink.port)]}}, tmp_path)
    try:
        for index in range(3):
            rcpts = [f"r{index}@example.test", f"s{index}@example.test"]
            outcomes = await d.deliver(message("a@sender.test", *rcpts), body(f"m{index}"), rcpts)
            assert [o.kind for o in outcomes.values()] == [OutcomeKind.DELIVERED] * 2, outcomes
    finally:
        await d.close()
    assert await sink.async_wait_for(3) == 3
    arrived = sorted(sink.messages(), key=lambda m: m.recipients)
    assert [m.recipients for m in arrived] == [(f"r{i}@example.test", f"s{i}@example.test") for i in range(3)]
    assert all(m.data == body(f"m{i}") for i, m in enumerate(arrived))
    assert {m.helo for m in arrived} == {"relay.test"}


def test_delivery_under_uvloop(smtp_sink_factory: SinkFactory, tmp_path: Path) -> None:
    """The relay runs on uvloop, whose transports are no asyncio.Transport subclasses."""
    sink = smtp_sink_factory()
    routing = {"default": {"smarthosts": [smarthost(sink.port)]}}

    async def deliver() -> set[OutcomeKind]:
        d = deliverer(routing, tmp_path)
        try:
            kinds = set()
            for index in range(2):
                outcomes = await d.deliver(message("a@s.test", "b@e.test"), body(f"u{index}"), ["b@e.test"])
                kinds |= {o.kind for o in outcomes.values()}
            return kinds
        finally:
            await d.close()

    assert uvloop.run(deliver()) == {OutcomeKind.DELIVERED}
    assert sink.wait_for(2) == 2


async def test_real_postfix_upstream_with_a_refused_recipient(
    postfix_factory: PostfixFactory, smtp_sink_factory: SinkFactory, tmp_path: Path
) -> None:
    """A stock Postfix (which offers PIPELINING and checks its use) as the smarthost: one refused
    recipient among accepted ones, messages back to back on one pooled connection, dot lines intact."""
    sink = smtp_sink_factory()
    postfix = postfix_factory(
        relayhost=(sink.host, sink.port),
        main_cf={
            "smtpd_recipient_restrictions": "check_recipient_access "
            "inline:{ {gone@example.test=REJECT no such user} }, permit_mynetworks, reject",
        },
    )
    routing = {"default": {"smarthosts": [smarthost(postfix.port)]}}
    d = deliverer(routing, tmp_path, timeout=10.0)
    rcpts = ["a@example.test", "gone@example.test", "b@example.test"]
    try:
        for index in range(3):
            outcomes = await d.deliver(message("s@sender.test", *rcpts), body(f"pf{index}"), rcpts)
            assert outcomes["gone@example.test"].kind is OutcomeKind.PERMANENT, outcomes
            assert outcomes["gone@example.test"].code == 554 and "no such user" in outcomes["gone@example.test"].message
            assert outcomes["a@example.test"].kind is outcomes["b@example.test"].kind is OutcomeKind.DELIVERED
    finally:
        await d.close()
    sink.wait_for(3, timeout=20)
    arrived = sorted(sink.messages(), key=lambda m: m.email()["Subject"])
    assert [m.recipients for m in arrived] == [("a@example.test", "b@example.test")] * 3
    assert all(b"\r\n.leading dot line\r\n" in m.data for m in arrived)
    log = postfix.log.read_text()
    assert "improper command pipelining" not in log
    assert " bdat=3 " in log  # Postfix offers CHUNKING: one BDAT per message, on one connection

    # every recipient refused: Postfix refuses the BDAT too (and drops its octets); the connection goes on
    d = deliverer(routing, tmp_path, timeout=10.0)
    try:
        refused = await d.deliver(message("s@x.test", "gone@example.test"), body("x"), ["gone@example.test"])
        after = await d.deliver(message("s@x.test", "a@example.test"), body("after"), ["a@example.test"])
    finally:
        await d.close()
    assert refused["gone@example.test"].kind is OutcomeKind.PERMANENT
    assert after["a@example.test"].kind is OutcomeKind.DELIVERED
    sink.wait_for(4, timeout=20)


def _failure_id(value: object) -> str:
    """`hard_reject=['MAIL']` for a sink behaviour, the value itself for the rest of a test's parameters."""
    if not isinstance(value, SinkBehaviour):
        return str(value)
    knobs = ("soft_reject", "hard_reject", "reply_421", "disconnect")
    return ",".join(f"{knob}={getattr(value, knob)}" for knob in knobs if getattr(value, knob))


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize(
    ("behaviour", "kind", "code"),
    [
        (SinkBehaviour(hard_reject=["MAIL"]), OutcomeKind.PERMANENT, 500),
        (SinkBehaviour(soft_reject=["RCPT"]), OutcomeKind.TEMPORARY, 450),
        (SinkBehaviour(hard_reject=["DATA"]), OutcomeKind.PERMANENT, 500),
        (SinkBehaviour(soft_reject=["."]), OutcomeKind.TEMPORARY, 450),
        (SinkBehaviour(hard_reject=["."]), OutcomeKind.PERMANENT, 500),
        (SinkBehaviour(reply_421=["MAIL"]), OutcomeKind.TEMPORARY, None),
        (SinkBehaviour(reply_421=["DATA"]), OutcomeKind.TEMPORARY, None),
        (SinkBehaviour(disconnect=["RCPT"]), OutcomeKind.TEMPORARY, 0),
        (SinkBehaviour(disconnect=["."]), OutcomeKind.TEMPORARY, 0),
    ],
    ids=_failure_id,
)
async def test_each_upstream_failure_gives_the_right_outcome(
    behaviour: SinkBehaviour,
    kind: OutcomeKind,
    code: int | None,
    pipelining: bool,
    smtp_sink_factory: SinkFactory,
    tmp_path: Path,
) -> None:
    """smtp-sink refusing, answering 421 or hanging up at each stage: 5xx is permanent, everything
    else (4xx, 421, a lost connection) keeps the message queued; the sink never counts a message."""
    sink = smtp_sink_factory(behaviour=replace(behaviour, pipelining=pipelining))
    outcomes = await _deliver_to_two(sink.port, tmp_path)
    assert {o.kind for o in outcomes.values()} == {kind}, outcomes
    if code == 0:
        assert {o.code for o in outcomes.values()} == {0}  # no reply: a connection-level failure
    elif code is not None:
        assert all(code <= o.code < code + 100 for o in outcomes.values()), outcomes
    assert sink.count() == 0


async def _deliver_to_two(port: int, tmp_path: Path) -> Mapping[str, Outcome]:
    """One message for two recipients through a Deliverer whose smarthost is `port`."""
    d = deliverer({"default": {"smarthosts": [smarthost(port)]}}, tmp_path)
    rcpts = ["a@example.test", "b@example.test"]
    try:
        return await d.deliver(message("s@sender.test", *rcpts), body(), rcpts)
    finally:
        await d.close()


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("stage", ["MAIL", "DATA", "."])
async def test_a_421_then_hang_up_is_reported_as_the_421(
    stage: str, pipelining: bool, smtp_sink_factory: SinkFactory, tmp_path: Path
) -> None:
    """A server that answers 421 and closes (a throttling provider) is reported with its 421, not as a lost
    connection: traffic shaping backs off on it (delivery/shaper.py feedback_of)."""
    sink = smtp_sink_factory(behaviour=SinkBehaviour(reply_421=[stage], pipelining=pipelining))
    outcomes = await _deliver_to_two(sink.port, tmp_path)
    assert {(o.kind, o.code) for o in outcomes.values()} == {(OutcomeKind.TEMPORARY, 421)}, outcomes
    assert sink.count() == 0
