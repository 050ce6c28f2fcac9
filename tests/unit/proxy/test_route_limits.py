"""The engine's per-route limits, unit by unit: which stall limit an exchange has at each
stage (its route's response idle timeout once its request is forwarded whole, else the
engine's), which idle time a tunnel has, and an idle WebSocket closed with 1001 both ways
(a tunnel that is not a WebSocket with a FIN, no byte added)."""

from __future__ import annotations

from websockets.frames import Close, Opcode

from tests.unit.proxy.test_output import _next_iteration
from tests.unit.proxy.test_tunnel_going_away import Tunnel, frame, frames, written
from zeitwork.proxy.backends import Pool
from zeitwork.proxy.config import DEADLINE_FIRST_BYTE, DEADLINE_STREAM, ProxyConfig
from zeitwork.proxy.state import Exchange, stall_timeout
from zeitwork.proxy.tunnel import idle, idle_timeout
from zeitwork.proxy.types import ClientInfo, RequestHead

CONFIG = ProxyConfig(first_byte_timeout=60.0, stream_idle_timeout=30.0, tunnel_idle_timeout=3600.0)


def exchange(pool: Pool | None, *, body_done: bool) -> Exchange:
    head = RequestHead(
        method=b"POST",
        target=b"/",
        path="/",
        host="a.test",
        http_version="1.1",
        headers=[],
        keep_alive=True,
        request_id="r",
    )
    ex = Exchange(head, ClientInfo(peer_ip="127.0.0.1", client_ip="127.0.0.1"))
    ex.pool = pool
    ex.body_done = body_done
    return ex


def test_an_exchanges_stall_limit_at_each_stage() -> None:
    plain = Pool("plain")
    tight = Pool("tight")
    tight.response_idle_timeout = 2.0
    assert stall_timeout(CONFIG, None, DEADLINE_STREAM) == 30.0  # no exchange (HTTP/2 conn)
    for pool in (None, plain):  # no route, or one without a limit: the engine's
        assert stall_timeout(CONFIG, exchange(pool, body_done=True), DEADLINE_FIRST_BYTE) == 60
        assert stall_timeout(CONFIG, exchange(pool, body_done=True), DEADLINE_STREAM) == 30
    # the route's, for the response head and between the response's reads
    assert stall_timeout(CONFIG, exchange(tight, body_done=True), DEADLINE_FIRST_BYTE) == 2.0
    assert stall_timeout(CONFIG, exchange(tight, body_done=True), DEADLINE_STREAM) == 2.0
    # the request body still streaming in: the engine's stream idle timeout
    uploading = exchange(tight, body_done=False)
    assert stall_timeout(CONFIG, uploading, DEADLINE_STREAM) == 30.0
    uploading.response_started = True  # the backend answers before the body ended
    assert stall_timeout(CONFIG, uploading, DEADLINE_STREAM) == 2.0


async def test_a_tunnels_idle_time_is_its_routes() -> None:
    t = Tunnel()
    assert idle_timeout(t.client) == t.proxy.config.tunnel_idle_timeout
    pool = Pool("ws")
    t.client.tunnel_pool = pool
    assert idle_timeout(t.client) == t.proxy.config.tunnel_idle_timeout  # none set
    pool.tunnel_idle_timeout = 5.0
    assert idle_timeout(t.client) == 5.0


async def test_an_idle_websocket_gets_going_away_both_ways() -> None:
    t = Tunnel()
    t.from_backend(frame(0x1, b"hello", masked=False))
    t.from_client(frame(0x1, b"hi", masked=True))
    idle(t.client)
    await _next_iteration()
    to_client = frames(written(t.client_transport), masked=False)
    assert [f.opcode for f in to_client] == [Opcode.TEXT, Opcode.CLOSE]
    assert Close.parse(to_client[-1].data).code == 1001
    to_backend = frames(written(t.up_transport), masked=True)
    assert [f.opcode for f in to_backend] == [Opcode.TEXT, Opcode.CLOSE]
    assert Close.parse(to_backend[-1].data).code == 1001
    assert t.client.tunnel is None and t.up.tunnel is None


async def test_an_idle_tunnel_that_is_no_websocket_is_closed_without_a_byte_added() -> None:
    t = Tunnel(websocket=False)
    t.from_backend(b"raw bytes")
    idle(t.client)
    await _next_iteration()
    assert written(t.client_transport) == b"raw bytes"
    assert written(t.up_transport) == b""
    assert ("close", None) in t.calls("backend")
    assert ("write_eof", None) in t.calls("client")


async def test_a_closed_tunnel_gives_its_routes_place_back() -> None:
    t = Tunnel()
    pool = Pool("ws")
    pool.max_tunnels = 1
    assert pool.take_tunnel()
    t.client.tunnel_pool = pool
    assert not pool.take_tunnel()
    t.client.connection_lost(None)
    assert pool.tunnels == 0 and t.client.tunnel_pool is None
    assert pool.take_tunnel()


async def test_a_tunnel_ends_once_both_sides_shut_theirs() -> None:
    for backend_first in (True, False):
        t = Tunnel(websocket=False)
        pool = Pool("ws")
        assert pool.take_tunnel()
        t.client.tunnel_pool = pool
        first, second = (t.up, t.client) if backend_first else (t.client, t.up)
        assert first.eof_received() is True  # a half-close: passed on, the other way runs on
        told = "client" if backend_first else "backend"
        assert ("write_eof", None) in t.calls(told)
        assert t.client.tunnel is t.up and t.up.tunnel is t.client
        if backend_first:  # the open direction still carries bytes
            t.from_client(b"late ask")
        else:
            t.from_backend(b"late reply")
        assert second.eof_received() is True  # both shut: the tunnel is over, both closed
        assert t.client.tunnel is None and t.up.tunnel is None
        assert ("close", None) in t.calls("client") and ("close", None) in t.calls("backend")
        t.client.connection_lost(None)
        assert pool.tunnels == 0, backend_first
