"""The listener's admission checks through `Admission`, the chains the listener asks first."""

from __future__ import annotations

from smtp_relay.config.spec import Listener, SmtpRelaySpec
from smtp_relay.policy.admission import Admission
from smtp_relay.policy.verdict import ACCEPT, Action, Facts, Verdict, reject

PLAIN = Listener(name="smtp", port=2525)
SUBMISSION = Listener(name="sub", port=587, tls="starttls", requireTLS=True, auth="required")


def spec(**raw: object) -> SmtpRelaySpec:
    return SmtpRelaySpec.model_validate(raw)


def test_relay_needs_network_or_login_whatever_the_recipient() -> None:
    admission = Admission.from_spec(spec(clients={"allowedNetworks": ["10.0.0.0/8", "2001:db8::/32"]}))
    for rcpt in ["a@example.com", "a@[10.0.0.1]", "a%b@c", '"x@y"@z']:
        outsider = Facts(listener=PLAIN, client_ip="192.0.2.1", mail_from="s@example.org", rcpt=rcpt)
        assert admission.on_rcpt(outsider).verdict.reply == "554 5.7.1 Relay access denied"
        inside = Facts(listener=PLAIN, client_ip="10.1.2.3", mail_from="s@example.org", rcpt=rcpt)
        assert admission.on_rcpt(inside).verdict is ACCEPT
        user = Facts(listener=PLAIN, client_ip="192.0.2.1", auth_user="app", rcpt=rcpt)
        assert admission.on_rcpt(user).verdict is ACCEPT
    assert admission.on_rcpt(Facts(listener=PLAIN, client_ip="2001:db8::5", rcpt="a@b")).verdict is ACCEPT
    assert admission.on_rcpt(Facts(listener=PLAIN, client_ip="garbage", rcpt="a@b")).verdict.refuses


def test_mail_checks_in_order() -> None:
    admission = Admission.from_spec(
        spec(
            listeners=[SUBMISSION.model_dump(by_alias=True)],
            tls={"secretName": "t"},
            clients={"users": {"secretName": "u"}},
            senders={"allowedDomains": ["example.org"]},
            policy={"maxMessageSize": "1Ki", "maxRecipients": 2},
        )
    )
    base = Facts(listener=SUBMISSION, client_ip="192.0.2.1", mail_from="a@example.org")
    assert admission.on_mail(base).verdict.reply == "530 5.7.0 Must issue a STARTTLS command first"
    tls = Facts(listener=SUBMISSION, client_ip="192.0.2.1", secure=True, mail_from="a@example.org")
    assert admission.on_mail(tls).verdict.reply == "530 5.7.0 Authentication required"
    ok = Facts(listener=SUBMISSION, client_ip="192.0.2.1", secure=True, auth_user="u", mail_from="a@example.org")
    assert admission.on_mail(ok).verdict is ACCEPT
    big = Facts(
        listener=SUBMISSION,
        client_ip="192.0.2.1",
        secure=True,
        auth_user="u",
        mail_from="a@example.org",
        declared_size=1025,
    )
    assert admission.on_mail(big).verdict.code == 552
    other = Facts(listener=SUBMISSION, client_ip="192.0.2.1", secure=True, auth_user="u", mail_from="a@evil.org")
    assert admission.on_mail(other).verdict.reply == "553 5.7.1 Sender address domain not allowed"
    null = Facts(listener=SUBMISSION, client_ip="192.0.2.1", secure=True, auth_user="u", mail_from="")
    assert admission.on_mail(null).verdict is ACCEPT
    third = Facts(listener=SUBMISSION, client_ip="192.0.2.1", auth_user="u", rcpt="x@y", rcpt_count=2)
    assert admission.on_rcpt(third).verdict.reply == "452 4.5.3 Too many recipients"


def test_seam_appends_checks() -> None:
    admission = Admission.from_spec(spec())
    admission.connect.append(lambda f: reject(554, "5.7.1", "Listed in a DNSBL", "dnsbl"))
    decision = admission.on_connect(Facts(listener=PLAIN, client_ip="192.0.2.1"))
    assert decision.verdict.action is Action.REJECT and decision.verdict.reason == "dnsbl"


def test_a_tag_alone_is_an_accept_for_the_listener() -> None:
    admission = Admission.from_spec(spec())
    admission.connect.append(lambda f: Verdict(Action.TAG, 250, "2.0.0", "Ok", "spam_tag"))
    assert admission.on_connect(Facts(listener=PLAIN, client_ip="192.0.2.1")).verdict is ACCEPT
