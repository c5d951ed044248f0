"""Zones for the dnscheck tests: one made-up domain per state a SendingDomain's DNS can be in.

Served by the real NSD of tests/peers/dns.py on loopback. `fleet.test` plays the fleet's own SPF
record (`include:_spf.fleet.test`) and its bounce host.
"""

from __future__ import annotations

from smtp_relay.dnscheck.dkim_keys import public_txt_from_pem
from tests.peers.dns import txt_rdata
from tests.relay.dnscheck.keys import ed25519_pem, rsa2048_pem, rsa_pem

SELECTOR = "s1"
EGRESS = "192.0.2.10"
"""An egress address the fleet's record (`_spf.fleet.test`) authorizes."""
OTHER_IP = "203.0.113.5"

RSA_TXT = public_txt_from_pem(rsa2048_pem())
ED_TXT = public_txt_from_pem(ed25519_pem())
WRONG_TXT = public_txt_from_pem(rsa_pem(1))


def _txt(owner: str, value: str) -> str:
    return f"{owner} TXT {txt_rdata(value)}"


def _dkim(value: str) -> str:
    return _txt(f"{SELECTOR}._domainkey", value)


TOO_MANY = " ".join(f"a:h{i}.toomany.test" for i in range(11))

ZONES: dict[str, list[str]] = {
    "fleet.test": [
        _txt("_spf", "v=spf1 ip4:192.0.2.0/24 -all"),
        "mx A 127.0.0.1",
    ],
    # everything right: RSA key (two TXT strings), SPF by ip4, DMARC, return path MX and SPF
    "good.test": [
        _dkim(RSA_TXT),
        '@ TXT "google-site-verification=abc"',
        _txt("@", f"v=spf1 ip4:{EGRESS} -all"),
        _txt("_dmarc", "v=DMARC1; p=quarantine; rua=mailto:dmarc@good.test"),
        "bounces MX 10 mx.fleet.test.",
        _txt("bounces", "v=spf1 include:_spf.fleet.test -all"),
    ],
    # Ed25519 key beside another TXT at the selector, SPF through the fleet's include, no DMARC
    "ed.test": [
        _txt(f"{SELECTOR}._domainkey", "some note"),
        _dkim(ED_TXT),
        _txt("@", "v=spf1 include:_spf.fleet.test -all"),
    ],
    # wrong everything: another key, SPF without the fleet, malformed DMARC, MX elsewhere
    "wrong.test": [
        _dkim(WRONG_TXT),
        _txt("@", f"v=spf1 ip4:{OTHER_IP} -all"),
        _txt("_dmarc", "v=DMARC1; p=sometimes"),
        "bounces MX 10 mail.elsewhere.test.",
        _txt("bounces", f"v=spf1 ip4:{OTHER_IP} -all"),
    ],
    # no DKIM record, SPF ~all (softfail), DMARC name with only other TXT
    "soft.test": [
        _txt("@", f"v=spf1 ip4:{OTHER_IP} ~all"),
        _txt("_dmarc", "hello"),
        "www A 127.0.0.1",
    ],
    # an SPF record that needs more than 10 DNS lookups (permerror)
    "toomany.test": [
        _txt("@", f"v=spf1 {TOO_MANY} include:_spf.fleet.test -all"),
        *(f"h{i} A 198.51.100.{i + 1}" for i in range(11)),
    ],
    # include-only domains (no egressIps): nested include, qualified include, include after -all
    "nested.test": [
        _txt("@", "v=spf1 include:_spf.corp.nested.test -all"),
        _txt("_spf.corp", "v=spf1 ip4:198.51.100.7 include:_spf.fleet.test -all"),
    ],
    "redirect.test": [_txt("@", "v=spf1 redirect=_spf.fleet.test")],
    "negated.test": [_txt("@", "v=spf1 -include:_spf.fleet.test -all")],
    "after-all.test": [_txt("@", "v=spf1 -all include:_spf.fleet.test")],
    "dangling.test": [_txt("@", "v=spf1 include:gone.fleet.test include:_spf.fleet.test -all")],
    "macro.test": [_txt("@", "v=spf1 include:%{p}._spf.fleet.test -all")],
    "no-spf.test": ["www A 127.0.0.1"],
    "v6.test": [_txt("@", "v=spf1 ip6:2001:db8:10::/48 ip4:198.51.100.0/24 -all")],
}
