"""The benchmark's reference signer works: Postfix with the OpenDKIM milter (bench/peers/opendkim.py) signs
what it relays, and OpenDKIM's verifier, asking the tests' nsd, passes it. Without this, `relay_vs_postfix
--dkim` could compare the relay's signing against a Postfix that signs nothing."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.peers.opendkim import OpenDkimMilter

from tests.peers.opendkim import DkimWorld, private_pem
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SinkFactory

pytestmark = pytest.mark.peers


@pytest.fixture
def milter(dkim_world: DkimWorld) -> Iterator[OpenDkimMilter]:
    folder = Path(tempfile.mkdtemp(prefix="relayfleet-opendkim-milter-"))
    key = private_pem(dkim_world.rsa_key)
    signer = OpenDkimMilter(folder, domain=dkim_world.domain, selector=DkimWorld.RSA_SELECTOR, key_pem=key)
    try:
        yield signer.start()
    finally:
        signer.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_postfix_with_the_opendkim_milter_signs_and_opendkim_verifies(
    dkim_world: DkimWorld, milter: OpenDkimMilter, postfix_factory: PostfixFactory, smtp_sink_factory: SinkFactory
) -> None:
    sink = smtp_sink_factory()
    main_cf = {"smtpd_milters": milter.address, "milter_default_action": "tempfail", "milter_protocol": "6"}
    postfix = postfix_factory(relayhost=(sink.host, sink.port), main_cf=main_cf)
    message = b"From: <alice@example.test>\r\nTo: <bob@example.org>\r\nSubject: via postfix\r\n\r\nhello\r\n"
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        client.sendmail("alice@example.test", ["bob@example.org"], message)
    sink.wait_for(1, timeout=30)
    [received] = sink.messages()
    assert received.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    [verdict] = dkim_world.verifier.verify_message(received.data)
    assert (verdict.result, verdict.selector) == ("pass", DkimWorld.RSA_SELECTOR)
