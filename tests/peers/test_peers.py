"""The smtp-sink and Postfix fixtures against the real programs: what other tests rely on."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import aiosmtplib
import dns.resolver
import pytest
from bench.peers.postfix import postfix_available
from bench.peers.smtp_sink import SinkBehaviour, SmtpSink, parse_dump
from bench.relay_vs_postfix import LoopbackDns, process_tree, relay_manifest, tree_cpu_seconds

from smtp_relay.config.manifest import parse_spec
from tests.harness.waiting import wait_for
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SinkFactory

pytestmark = pytest.mark.peers

MESSAGE = b"Subject: peers\r\nFrom: a@example.com\r\n\r\nfirst line\r\n.starts with a dot\r\nlast line\r\n"


def test_sink_records_envelope_and_data(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.net", "c@example.org"], MESSAGE)
        client.sendmail("", ["bounce@example.net"], b"Subject: null sender\r\n\r\nbody\r\n")
    assert smtp_sink.wait_for(2) == 2
    second, first = sorted(smtp_sink.messages(), key=lambda message: message.sender)
    assert first.sender == "a@example.com"
    assert first.recipients == ("b@example.net", "c@example.org")
    assert first.helo == "client.example"
    assert first.client == "127.0.0.1"
    assert first.data == MESSAGE  # dot-unstuffed again, CRLF restored
    assert first.email()["Subject"] == "peers"
    assert second.sender == ""
    assert second.recipients == ("bounce@example.net",)


def test_parse_dump_refuses_a_file_still_being_written() -> None:
    partial = b"X-Client-Addr: 127.0.0.1\nX-Mail-Args: <a@x.org>\nX-Rcpt-Args: <b@y.org>\n"
    with pytest.raises(ValueError, match="incomplete"):
        parse_dump(partial)


def test_sink_stop_and_start_keep_the_port(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(dump=False)
    port = sink.port
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    sink.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sink.host, port), timeout=2).close()
    sink.start()
    assert sink.port == port
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert sink.wait_for(2) == 2  # counts add up over restarts
    with pytest.raises(RuntimeError, match="only counts"):
        sink.messages()


def test_sink_soft_rejects_rcpt_until_it_is_told_otherwise(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(soft_reject=["RCPT"], soft_bounce_reply="451 4.3.0 try again later")
    with smtplib.SMTP(sink.host, sink.port) as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert refused.value.recipients["b@example.net"] == (451, b"4.3.0 try again later")
    sink.restart(SinkBehaviour())
    with smtplib.SMTP(sink.host, sink.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert sink.wait_for(1) == 1
    assert [m.recipients for m in sink.messages()] == [("b@example.net",)]


def test_sink_refused_data_is_not_counted_as_accepted(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(hard_reject=["."])
    with smtplib.SMTP(sink.host, sink.port) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert refused.value.smtp_code == 500
    assert sink.attempts() == 1
    assert sink.count() == 0
    assert sink.messages() == []


def test_sink_421_on_mail(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(reply_421=["MAIL"])
    with smtplib.SMTP(sink.host, sink.port) as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert refused.value.smtp_code == 421


def test_sink_can_refuse_the_connection_itself(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(reply_421=["CONNECT"])
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(sink.host, sink.port, timeout=5)
    assert refused.value.smtp_code == 421


async def test_sink_async_wait_lets_the_loop_send(smtp_sink: SmtpSink) -> None:
    await aiosmtplib.send(
        MESSAGE, sender="a@example.com", recipients=["b@example.net"], hostname=smtp_sink.host, port=smtp_sink.port
    )
    assert await smtp_sink.async_wait_for(1, seconds=5) == 1


def test_postfix_relays_to_the_sink(postfix_factory: PostfixFactory, smtp_sink: SmtpSink) -> None:
    postfix = postfix_factory(relayhost=(smtp_sink.host, smtp_sink.port))
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (make peers)")
    result = subprocess.run(
        [swaks, "--server", postfix.address, "--from", "a@example.com", "--to", "b@example.net",
         "--header", "Subject: via postfix", "--body", "hello"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    smtp_sink.wait_for(1, timeout=15)
    (message,) = smtp_sink.messages()
    assert (message.sender, message.recipients) == ("a@example.com", ("b@example.net",))
    assert message.email()["Subject"] == "via postfix"
    assert f"by {postfix.myhostname} (Postfix)" in message.email()["Received"]
    assert message.helo == postfix.myhostname
    postfix.wait_queue_empty(timeout=10)
    # postlogd writes the smtp agent's line a moment after the sink has the message (seen once under load)
    wait_for(lambda: "status=sent" in postfix.log.read_text(), timeout=10)


def test_postfix_queues_during_an_outage_and_delivers_after(
    postfix_factory: PostfixFactory, smtp_sink_factory: SinkFactory
) -> None:
    sink = smtp_sink_factory()
    postfix = postfix_factory(relayhost=(sink.host, sink.port))
    sink.stop()
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert postfix.queue_count() == 1  # fsynced to the queue before the 250, and kept
    sink.start()
    postfix.flush()
    sink.wait_for(1, timeout=20)
    postfix.wait_queue_empty(timeout=10)
    assert sink.messages()[0].data.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])


def test_postfix_reconfigure_moves_the_relayhost(
    postfix_factory: PostfixFactory, smtp_sink_factory: SinkFactory
) -> None:
    first, second = smtp_sink_factory(), smtp_sink_factory()
    postfix = postfix_factory(relayhost=(first.host, first.port))
    postfix.reconfigure(relayhost=f"[{second.host}]:{second.port}")
    with smtplib.SMTP(postfix.host, postfix.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    second.wait_for(1, timeout=15)
    assert first.count() == 0


def test_two_postfix_instances_in_a_chain(postfix_factory: PostfixFactory, smtp_sink: SmtpSink) -> None:
    inner = postfix_factory(relayhost=(smtp_sink.host, smtp_sink.port))
    outer = postfix_factory(relayhost=(inner.host, inner.port))
    assert inner.port != outer.port and inner.queue_dir != outer.queue_dir
    with smtplib.SMTP(outer.host, outer.port) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    smtp_sink.wait_for(1, timeout=15)
    received = smtp_sink.messages()[0].email().get_all("Received")
    assert received is not None and len(received) == 2
    assert f"by {inner.myhostname}" in received[0] and f"by {outer.myhostname}" in received[1]
    assert outer.pids() and inner.pids()
    outer.stop()
    assert not outer.running and outer.pids() == []
    assert inner.running


# --- the benchmark's own machinery (bench/relay_vs_postfix.py) -------------------------------------


@pytest.mark.parametrize("policy", ["off", "default"])
def test_bench_manifest_is_a_valid_smtprelay(smtp_sink: SmtpSink, policy: Literal["off", "default"]) -> None:
    manifest = relay_manifest(2525, smtp_sink, policy, dns_port=5353)
    spec = parse_spec(manifest["spec"])  # type: ignore[arg-type]
    (smarthost,) = spec.routing.default.smarthosts or []
    assert (smarthost.host, smarthost.port, smarthost.tls) == (smtp_sink.host, smtp_sink.port, "none")
    assert spec.clients.allowed_networks == ["127.0.0.0/8"]
    assert (spec.policy.spam.engine == "off") is (policy == "off")


def test_bench_dns_answers_the_test_domains_only() -> None:
    server = LoopbackDns(["example.net"])
    server.start()
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], server.port, 2.0
        (mx,) = resolver.resolve("example.net", "MX")
        assert str(mx.exchange) == "mx.example.net."
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("elsewhere.example", "MX")
    finally:
        server.stop()


def test_bench_cpu_of_a_tree_counts_exited_children() -> None:
    # The shell's child burns CPU and exits: its time must show up through the shell's cutime.
    burn = f"{sys.executable} -c 'import time; end = time.process_time() + 0.3\nwhile time.process_time() < end: pass'"
    shell = subprocess.Popen(["sh", "-c", f"{burn}; read line"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while tree_cpu_seconds(shell.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_seconds(shell.pid) >= 0.25
        assert process_tree(shell.pid)[0] == shell.pid
    finally:
        shell.communicate(b"\n", timeout=10)


@pytest.mark.slow
def test_bench_quick_run_against_postfix() -> None:
    # A subprocess, as `make bench` runs it (and asyncio.run inside a test would fight pytest-asyncio's loop).
    if not postfix_available():
        pytest.skip("Postfix needs root and the postfix package (make peers)")
    command = ["-m", "bench.relay_vs_postfix", "--quick", "--targets", "postfix", "--messages", "5"]
    result = subprocess.run(
        [sys.executable, *command, "--latency-seconds", "0.5"],
        capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "        5 postfix" in result.stdout
    assert "p99 ms" in result.stdout
