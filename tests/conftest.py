"""Shared fixtures: each real peer (DNS server, smtp-sink, Postfix, TLS CA, swaks, API emulator)
lives in its own module under tests/peers and is registered here."""

pytest_plugins = [
    "tests.peers.dns",
    "tests.peers.smtp_sink",
    "tests.peers.postfix",
    "tests.peers.tls",
    "tests.peers.swaks",
    "tests.peers.kube",
    "tests.peers.clamd",
    "tests.peers.rspamd",
    "tests.peers.spamd",
    "tests.peers.opendkim",
    "tests.peers.redis",
]
