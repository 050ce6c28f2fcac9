"""The proxy core's engine and client protocol under their first module path.

The core is split by concern (``engine``: ``Proxy`` and listening sockets; ``client``:
``ClientProtocol``; ``connection``: what the modules it delegates to know of it and of the
engine; ``http1``: request and response heads; ``exchange``: routing, retry, completion;
``tunnel``: upgraded connections; ``responses``: the core's own answers; ``output``: the
flusher; ``state``: the exchange's record; ``config``: ``ProxyConfig`` and shared constants).
The names code outside imported from here stay importable from here: this module only
re-exports them.
"""

from __future__ import annotations

from zeitwork.proxy.client import NO_PARSER as _NO_PARSER
from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import BUFFER_LIMIT, IDEMPOTENT, ProxyConfig
from zeitwork.proxy.config import DEADLINE_FIRST_BYTE as _D_FIRST_BYTE
from zeitwork.proxy.config import DEADLINE_HEAD as _D_HEAD
from zeitwork.proxy.config import DEADLINE_IDLE as _D_IDLE
from zeitwork.proxy.config import DEADLINE_LINGER as _D_LINGER
from zeitwork.proxy.config import DEADLINE_STREAM as _D_STREAM
from zeitwork.proxy.config import DEADLINE_TUNNEL as _D_TUNNEL
from zeitwork.proxy.engine import Proxy, peer_address, reuse_port_socket
from zeitwork.proxy.exchange import CONTINUE as _CONTINUE
from zeitwork.proxy.http1 import RequestError as _Reject
from zeitwork.proxy.http1 import absolute_target
from zeitwork.proxy.http1 import lf_request_line as _lf_request_line
from zeitwork.proxy.output import OutputFlusher
from zeitwork.proxy.state import Exchange

__all__ = [
    "BUFFER_LIMIT",
    "IDEMPOTENT",
    "_CONTINUE",
    "_D_FIRST_BYTE",
    "_D_HEAD",
    "_D_IDLE",
    "_D_LINGER",
    "_D_STREAM",
    "_D_TUNNEL",
    "_NO_PARSER",
    "ClientProtocol",
    "Exchange",
    "OutputFlusher",
    "Proxy",
    "ProxyConfig",
    "_Reject",
    "_lf_request_line",
    "absolute_target",
    "peer_address",
    "reuse_port_socket",
]
