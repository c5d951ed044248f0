"""The PROXY protocol header (HAProxy v1/v2) in front of the SMTP dialogue, when a load balancer asks for it.

Behind a balancer the TCP peer is the balancer, so the client address every check uses comes from
this header instead. aiosmtpd parses it; a connection without a valid one is cut before the greeting.
"""

from __future__ import annotations

import logging

from aiosmtpd.proxy_protocol import get_proxy

from smtp_relay.smtp.state import SessionState

log = logging.getLogger("smtp_relay.smtp")

PROXY_TIMEOUT = 10.0
"""Seconds a connection may take to send its PROXY header."""


async def read_proxy_header(session: SessionState) -> bool:
    """Take the client address from a PROXY v1/v2 header; without a valid one, hang up."""
    session._reset_timeout(PROXY_TIMEOUT)
    data = await get_proxy(session._reader)
    if not data.valid:
        session._relay.metrics.rejected.labels(reason="proxy_protocol").inc()
        log.warning("client=%s invalid PROXY header: %s", session._client_ip, data.error)
        assert session.transport is not None
        session.transport.close()
        return False
    if data.src_addr is not None:  # None for PROXY UNKNOWN / v2 LOCAL: the balancer's own checks
        src = data.src_addr
        session._client_ip = src.decode() if isinstance(src, bytes) else str(src)
    session._reset_timeout()
    return True
