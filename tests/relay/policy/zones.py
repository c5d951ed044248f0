"""Zone data for the policy tests: SPF records of every result, include chains, a DNSBL zone, mail domains."""

from __future__ import annotations

CLIENT = "127.0.0.1"
"""The address the tests' SMTP client has (the relay sees loopback)."""

_TOO_MANY = " ".join(f"include:l{i}.spf.test" for i in range(1, 12))
_LONG = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(1, 40)) + f" ip4:{CLIENT} -all"

SPF_ZONE: dict[str, list[str]] = {
    "spf.test": [
        '@ TXT "v=spf1 ip4:127.0.0.1 -all"',
        'pass TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        'fail TXT "v=spf1 ip4:192.0.2.1 -all"',
        'softfail TXT "v=spf1 ip4:192.0.2.1 ~all"',
        'neutral TXT "v=spf1 ?all"',
        "none A 192.0.2.1",
        'none TXT "not an spf record"',
        'explained TXT "v=spf1 ip4:192.0.2.1 exp=why.spf.test -all"',
        'why TXT "%{i} may not send mail for %{d}"',
        'chain TXT "v=spf1 include:_a.spf.test -all"',
        '_a TXT "v=spf1 ip4:192.0.2.7 include:_b.spf.test -all"',
        '_b TXT "v=spf1 a:host.spf.test -all"',
        f"host A {CLIENT}",
        f'toomany TXT "v=spf1 {_TOO_MANY} -all"',
        *[f'l{i} TXT "v=spf1 ip4:192.0.2.99 -all"' for i in range(1, 12)],
        'split TXT "v=spf1 ip4:192.0.2.1 " "ip4:127.0.0.1 -all"',
        f'long TXT "{_LONG}"',
        'mx TXT "v=spf1 mx -all"',
        "mx MX 10 host.spf.test.",
        'helo TXT "v=spf1 a -all"',
        f"helo A {CLIENT}",
        'broken TXT "v=spf1 ip4:127.0.0.1 bogus:mechanism -all"',
    ],
}

DNSBL_ZONE: dict[str, list[str]] = {
    "bl.test": [
        "2.0.0.127 A 127.0.0.2",
        '2.0.0.127 TXT "127.0.0.2 is listed, see https://bl.test/lookup?127.0.0.2"',
        "3.0.0.127 A 127.0.0.3",
        "9.0.0.127 A 192.0.2.1",
        "10.0.0.127 A 127.255.255.254",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 A 127.0.0.4",
    ],
    "other-bl.test": [
        "2.0.0.127 A 127.0.0.5",
        '2.0.0.127 TXT "also here"',
    ],
}

MAIL_ZONE: dict[str, list[str]] = {
    "mail.test": [
        "@ MX 10 mx.mail.test.",
        "mx A 127.0.0.1",
        "aonly A 127.0.0.1",
        "v6only AAAA ::1",
        "nullmx MX 0 .",
        'noaddress TXT "nothing to deliver to"',
    ],
}
