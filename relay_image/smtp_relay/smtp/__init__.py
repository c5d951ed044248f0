"""The SMTP listener side of the relay: sessions, the chunked DATA reader, AUTH and TLS contexts."""

from smtp_relay.smtp.server import MessageSink, RelayServer

__all__ = ["MessageSink", "RelayServer"]
