"""Property-based fuzzing of the SMTP session against one real relay process, delivering to smtp-sink.

Each example is one client connection (its own loopback address, trusted or not) that walks to a
state (nothing, EHLO, MAIL, RCPT, DATA; sometimes logged in, sometimes over STARTTLS) and then sends
random commands: known and unknown verbs with hostile arguments, raw bytes, over-long lines, bare CR
and LF, NUL, 8-bit, DATA bodies with everything a message can hold, AUTH exchanges. Every line ends
with LF, so every line gets exactly one reply, which is checked: well formed (`^[2-5][0-9][0-9][ -]`,
CRLF-terminated, one code per reply, an enhanced status code on every 2xx/4xx/5xx reply but the
greeting and the HELO/EHLO answer) and never the relay's catch-all 451 for an internal error. After
the examples: the process is alive, and the messages smtp-sink received are exactly those the relay
answered 250 to after DATA (each body carries a unique X-Fuzz-Id).

Why one process for all examples rather than one per example: starting a relay takes about a second,
so a process per example would allow a few dozen examples in the time budget instead of hundreds;
every example uses its own connection and its own client address, so examples do not share
per-connection or per-address state. `SMTP_FUZZ_PROFILE=smtp-fuzz-long` runs many more, random ones.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from bench.peers.ports import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.peers.tls import IssuedCert, ThrowawayCA

pytestmark = pytest.mark.peers

settings.register_profile(
    "smtp-fuzz",
    max_examples=400,
    deadline=None,  # the network and the relay's fsyncs are not the code under test's speed
    derandomize=True,  # the same examples on every run of `make test`
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "smtp-fuzz-long", parent=settings.get_profile("smtp-fuzz"), max_examples=5000, derandomize=False
)
PROFILE = settings.get_profile(os.environ.get("SMTP_FUZZ_PROFILE", "smtp-fuzz"))

USER, PASSWORD = "fuzz", "fuzz-Pa55"
MAX_SIZE = 64 * 1024
REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)\r\n$", re.DOTALL)
ENHANCED = re.compile(rb"^([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
MARKER = re.compile(rb"X-Fuzz-Id: (fz[0-9a-f]{32})")


def _plain_blob(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


# --- what a client sends -----------------------------------------------------------------------

VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH"]
VERBS += ["STARTTLS", "BDAT", "ETRN", "XCLIENT", "ehlo", "Mail", "", "MAIL FROM", "RCPT  TO", "DAT\x00A"]
TOKENS = st.sampled_from(
    [
        *["FROM:", "TO:", "<", ">", "@", "a@example.com", "<a@example.com>", "<>", " SIZE=", "SIZE=99999999999"],
        *["BODY=8BITMIME", "BODY=BINARYMIME", " SMTPUTF8", " AUTH=<>", "PLAIN", "LOGIN", "CRAM-MD5", "=", "*"],
        *[" ", "\t", "é", '"q u"@example.net', "postmaster", "[127.0.0.1]", "[IPv6:::1]", "..", "%", "\x7f"],
        *["<b@example.net>", "<ü@例え.jp>", "<@a,@b:c@example.net>", "\r", "\x00", "=?utf-8?B?", "\\"],
    ]
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=8)
ARGUMENTS = st.lists(st.one_of(TOKENS, TEXT), max_size=6).map("".join)
ENDINGS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r\r\n", b" \r\n"])
GOOD_LINES = [
    b"EHLO fuzz.test",
    b"HELO fuzz.test",
    b"MAIL FROM:<sender@example.com>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<s\xc3\xa9@example.com> SMTPUTF8",
    b"RCPT TO:<rcpt@example.net>",
    b"RCPT TO:<other@example.org>",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"STARTTLS",
    b"AUTH PLAIN " + _plain_blob(USER, PASSWORD),
    b"AUTH PLAIN " + _plain_blob(USER, "wrong"),
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH LOGIN " + base64.b64encode(USER.encode()),
    b"AUTH login",
    b"HELP",
    b"VRFY postmaster",
    b"QUIT",
]


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """One line ending with LF: a good command, a verb with a hostile argument, raw bytes, or an over-long line."""
    kind = draw(st.sampled_from(["good", "good", "verb", "verb", "raw", "long"]))
    if kind == "good":
        return draw(st.sampled_from(GOOD_LINES)) + draw(ENDINGS)
    if kind == "verb":
        verb = draw(st.sampled_from(VERBS))
        arguments = draw(ARGUMENTS)
        text = f"{verb} {arguments}" if arguments and draw(st.booleans()) else verb + arguments
        return text.encode() + draw(ENDINGS)
    if kind == "raw":
        return draw(st.binary(max_size=64)).replace(b"\n", b"") + draw(ENDINGS)
    size = draw(st.sampled_from([505, 600, 2000, 13_000, 70_000]))
    return draw(st.sampled_from([b"NOOP ", b"MAIL FROM:<", b"AUTH PLAIN ", b""])) + b"x" * size + b"\r\n"


AUTH_ANSWERS = st.one_of(
    st.sampled_from(
        [
            *[_plain_blob(USER, PASSWORD), _plain_blob(USER, "wrong"), b"*", b"=", b"", b"!!!", b"ZnV6eg=="],
            *[base64.b64encode(USER.encode()), base64.b64encode(PASSWORD.encode())],
        ]
    ),
    st.binary(max_size=40).map(base64.b64encode),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"x" * 70_000, b"QUJD" * 3100]),  # beyond the stream's limit, beyond RFC 4954's
).map(lambda answer: answer + b"\r\n")

BODY_PIECES = st.one_of(
    st.binary(max_size=120),
    st.sampled_from(
        [
            *[b"\r\n", b"\n", b"\r", b"\x00", b".", b"..", b"\r\n.\r\n", b"\n.\n", b"\r\n.", b"Subject: fuzz\r\n"],
            *[b"Received: from x by y\r\n" * 31, b"\xff\xfe\xfd", b"=?utf-8?b?", b"\r\n\r\n", b"From: <a@b>\r\n"],
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Disposition: attachment; filename=a.exe\r\n\r\nMZ\r\n--b--\r\n",
        ]
    ),
    st.sampled_from([1000, 10_000, MAX_SIZE + 10]).map(lambda n: b"y" * n),
)


BODIES = st.lists(BODY_PIECES, max_size=12).map(b"".join)
"""Message content with everything a body can hold (sent through `_data_stream`)."""


def _data_stream(content: bytes) -> bytes:
    """Content as DATA sends it: dot-stuffed, so that only the final CRLF.CRLF ends it."""
    stuffed = content.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


# --- what the relay answers --------------------------------------------------------------------


@dataclass
class Outcomes:
    """What the relay said to every DATA of the run, by X-Fuzz-Id."""

    accepted: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    """The connection ended before the reply to the final dot could be read."""
    examples: int = 0


class Conversation:
    """One client connection: sends lines, reads and checks one reply per line, records a transcript."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream = sock.makefile("rb")
        self.transcript: list[bytes] = []
        self.open = True

    def fail(self, problem: str) -> None:
        raise AssertionError(problem + "\ntranscript:\n" + "\n".join(repr(x) for x in self.transcript[-30:]))

    def reply(self, *, plain: bool = False) -> int | None:
        """One whole reply, checked; None when the relay closed. `plain`: no enhanced code expected."""
        code: bytes | None = None
        while True:
            line = self.stream.readline()
            if not line:
                if code is not None:
                    self.fail("reply cut off in the middle")
                self.open = False
                return None
            self.transcript.append(b"S: " + line)
            match = REPLY_LINE.match(line)
            if match is None:
                self.fail(f"malformed reply line {line!r}")
            assert match is not None
            if code is not None and match[1] != code:
                self.fail(f"one reply, two codes: {code!r} then {match[1]!r}")
            code = match[1]
            if match[2] == b" ":
                break
        number = int(code)
        enhanced = ENHANCED.match(match[3])
        if not plain and code[:1] in b"245" and (enhanced is None or enhanced[1] != code[:1]):
            self.fail(f"no matching enhanced status code in {line!r}")
        if line.startswith(b"451 4.3.0 Internal error"):
            self.fail("the relay hit an internal error")
        return number

    def send(self, data: bytes, *, plain: bool = False) -> int | None:
        self.transcript.append(b"C: " + data[:200])
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)  # a failure: the relay hung up (421), its last reply is still to be read
        return self.reply(plain=plain)

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.stream.close()
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.stream = self.sock.makefile("rb")
        self.transcript.append(b"-- TLS --")


STATES = ["greeted", "ehlo", "auth", "mail", "rcpt", "data"]
"""Where an example's scripted prefix leads before its random commands (data: the body is random, then
random commands follow the transaction). On the STARTTLS port the prefix may start TLS after EHLO."""
PREFIX = {
    "ehlo": [b"EHLO fuzz.test\r\n"],
    "auth": [b"AUTH PLAIN " + _plain_blob(USER, PASSWORD) + b"\r\n"],
    "mail": [b"MAIL FROM:<sender@example.com>\r\n"],
    "rcpt": [b"RCPT TO:<rcpt@example.net>\r\n"],
    "data": [b"DATA\r\n"],
}


def _prefix(state: str, *, secure: bool, login: bool) -> list[bytes]:
    """The lines that lead to `state`: EHLO, then STARTTLS and EHLO again if `secure`, AUTH if `login`, MAIL..."""
    lines: list[bytes] = []
    for step in STATES[1 : STATES.index(state) + 1]:
        if step == "auth" and not login:
            continue
        lines += PREFIX[step]
        if step == "ehlo" and secure:
            lines += [b"STARTTLS\r\n", *PREFIX["ehlo"]]
    return lines


def _converse(
    data: st.DataObject, port: int, starttls: bool, source: str, context: ssl.SSLContext, outcomes: Outcomes
) -> None:
    """One example: a connection that walks to a drawn state, then sends random lines."""
    state = data.draw(st.sampled_from([*STATES, "data", "data"]), label="state")  # DATA is where most can go wrong
    secure = starttls and data.draw(st.booleans(), label="secure")
    login = data.draw(st.booleans(), label="login")
    scripted = _prefix(state, secure=secure, login=login)
    lines = scripted + data.draw(st.lists(command_lines(), max_size=10), label="commands")
    talk = Conversation(socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)))
    try:
        _run(talk, data, lines, len(scripted), context, outcomes)
    finally:
        talk.close()


def _run(
    talk: Conversation,
    data: st.DataObject,
    lines: list[bytes],
    scripted: int,
    context: ssl.SSLContext,
    outcomes: Outcomes,
) -> None:
    """Send the lines, answering what the relay asks for (AUTH challenges, DATA, the TLS handshake)."""
    if talk.reply(plain=True) != 220:
        return
    for n, line in enumerate(lines):
        verb = line.split(b" ", 1)[0].strip().upper()
        code = talk.send(line, plain=verb in (b"EHLO", b"HELO"))
        while talk.open and code in (334, 354, 220):
            if code == 334:
                code = talk.send(data.draw(AUTH_ANSWERS, label="auth answer"))
            elif code == 354:
                marker = f"fz{uuid.uuid4().hex}"
                content = b"X-Fuzz-Id: " + marker.encode() + b"\r\n" + data.draw(BODIES, label="body")
                code = talk.send(_data_stream(content))
                if code == 250:
                    outcomes.accepted.add(marker)
                elif code is None:
                    outcomes.unknown.add(marker)
            elif n < scripted or data.draw(st.booleans(), label="handshake"):  # STARTTLS: TLS, go on
                talk.start_tls(context)
                code = None
            else:  # not TLS after all: the relay's handshake fails and it closes (maybe with an alert)
                talk.sock.sendall(b"EHLO not-tls\r\n")
                while talk.sock.recv(4096):
                    pass
                return
        if not talk.open or code in (221, 421):
            return


def _delivered(sink: Any) -> list[str]:
    return [m.decode() for message in sink.messages() for m in MARKER.findall(message.data)[:1]]


def test_random_smtp_sessions_never_break_the_relay_nor_lose_or_invent_mail(
    relay_factory: Any, smtp_sink_factory: Any, server_cert: IssuedCert, test_ca: ThrowawayCA
) -> None:
    sink = smtp_sink_factory()
    ports = {"plain": free_port(), "starttls": free_port()}
    spec = {
        "listeners": [
            {"name": "plain", "port": ports["plain"], "auth": "optional", "allowInsecureAuth": True},
            {"name": "starttls", "port": ports["starttls"], "tls": "starttls", "auth": "optional"},
        ],
        "tls": {"secretName": "relay-tls"},
        "clients": {"allowedNetworks": ["127.0.0.0/9"], "users": {"secretName": "users"}},
        "policy": {"spam": {"engine": "off"}, "maxMessageSize": MAX_SIZE, "maxRecipients": 3},
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": sink.port, "tls": "none"}]}},
        "queue": {"retry": {"schedule": ["1s"], "maxAge": "1h"}},
    }
    tls_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "relay-tls"},
        "stringData": {"tls.crt": server_cert.cert_pem.decode(), "tls.key": server_cert.key_pem.decode()},
    }
    users = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"}, "stringData": {USER: PASSWORD}}
    relay: RelayProcess = relay_factory(spec, tls_secret, users)
    context = ssl.create_default_context(cafile=str(test_ca.ca_path))
    outcomes = Outcomes()
    numbers = itertools.count(1)

    @PROFILE
    @given(data=st.data())
    def one_session(data: st.DataObject) -> None:
        example = next(numbers)
        trusted = data.draw(st.booleans(), label="trusted")  # 127.0.0.0/9 is allowedNetworks
        source = f"127.{(0 if trusted else 128) + example // 62500 % 128}.{example // 250 % 250}.{example % 250 + 1}"
        listener = data.draw(st.sampled_from(["plain", "starttls"]), label="listener")
        _converse(data, ports[listener], listener == "starttls", source, context, outcomes)
        outcomes.examples += 1
        assert relay.proc is not None and relay.proc.poll() is None, "the relay process died"

    one_session()
    assert outcomes.examples >= PROFILE.max_examples // 2
    assert outcomes.accepted, "no example got a message accepted: the strategies no longer reach DATA"

    def every_accepted_message_reached_the_sink() -> bool:
        return outcomes.accepted <= set(_delivered(sink))

    wait_for(every_accepted_message_reached_the_sink, timeout=60)
    delivered = _delivered(sink)
    invented = set(delivered) - outcomes.accepted - outcomes.unknown
    assert not invented, f"delivered without a 250 after DATA: {sorted(invented)}"
    assert relay.http("/livez")[0] == 200
    assert "internal error" not in relay.log.read_text()
