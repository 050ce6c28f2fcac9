"""The admin listener the data-plane services run beside their traffic port (the load
balancer's ``lb/admin.py``, the edge's ``edge/admin.py``): the proxy core with a policy that
answers every request itself, nothing routed, so the admin port has the core's parsing,
limits and timeouts, and a policy answers with ``LocalResponse`` (or ``PendingResponse``
when it needs I/O first)."""

from __future__ import annotations

import socket

from zeitwork.proxy.server import Proxy, ProxyConfig
from zeitwork.proxy.types import NullRouter, RequestPolicy

IDLE_TIMEOUT = 10.0  # s an idle keep-alive admin connection stays open
HEADER_TIMEOUT = 5.0  # s for a request head


async def serve_admin(policy: RequestPolicy, sock: socket.socket) -> Proxy:
    """Serve ``policy`` on the listening ``sock``; ``drain`` the returned engine to stop."""
    admin = Proxy(
        router=NullRouter(),
        policy=policy,
        config=ProxyConfig(idle_timeout=IDLE_TIMEOUT, header_timeout=HEADER_TIMEOUT),
    )
    await admin.serve(sock)
    return admin
