"""A WebSocket tunnel closed for a drain: the close frames (1001) go in only between frames,
a frame in flight is let through whole first and what follows it is dropped, an endpoint
that already sent its own close frame gets none, and a tunnel that is not a WebSocket (or
does not frame as one) is closed without a byte added. Client and backend protocols of the
core over recording transports."""

from __future__ import annotations

import os
import struct
from typing import Any

from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from tests.unit.proxy.test_output import NoRoutes, RecordingTransport, _next_iteration
from zeitwork.proxy.backends import Backend
from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import DEADLINE_TUNNEL
from zeitwork.proxy.engine import Proxy
from zeitwork.proxy.state import WebSocketTunnel
from zeitwork.proxy.tunnel import go_away
from zeitwork.proxy.upstream import UpstreamProtocol


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, mask_bit | n))
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def written(transport: RecordingTransport) -> bytes:
    out = b""
    for name, arg in transport.calls:
        if name == "write":
            out += arg
        elif name == "writelines":
            out += b"".join(arg)
    return out


def frames(data: bytes, *, masked: bool) -> list[Frame]:
    """``data`` parsed by the websockets library's frame parser (it must frame exactly)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsed = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=masked)
        try:
            next(parser)
            while True:
                parser.send(None)
        except StopIteration as done:
            parsed.append(done.value)
    return parsed


class Tunnel:
    def __init__(self, *, websocket: bool = True) -> None:
        self.proxy = Proxy(router=NoRoutes())
        self.client = ClientProtocol(self.proxy, tls=False)
        self.client_transport = RecordingTransport()
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]
        self.up = UpstreamProtocol(Backend("127.0.0.1:1"), self.proxy.flusher)
        self.up_transport = RecordingTransport()
        self.up.connection_made(self.up_transport)  # type: ignore[arg-type]
        self.client.tunnel, self.up.tunnel = self.up, self.client
        self.client.deadline_kind = DEADLINE_TUNNEL
        if websocket:
            self.client.ws = WebSocketTunnel()

    def from_backend(self, data: bytes) -> None:
        self.up.data_received(data)

    def from_client(self, data: bytes) -> None:
        self.client.data_received(data)

    def calls(self, side: str) -> list[tuple[str, Any]]:
        transport = self.client_transport if side == "client" else self.up_transport
        return transport.calls


async def test_close_frames_wait_for_the_frames_in_flight_and_nothing_follows_them() -> None:
    t = Tunnel()
    to_client = frame(0x2, os.urandom(70000), masked=False)
    to_backend = frame(0x1, b"x" * 3000, masked=True)
    t.from_backend(to_client[:1000])  # mid-frame both ways when the drain ends
    t.from_client(to_backend[:500])
    go_away(t.client)
    await _next_iteration()
    assert written(t.client_transport) == to_client[:1000]  # nothing put inside the frame
    assert written(t.up_transport) == to_backend[:500]
    later = frame(0x1, b"after the close", masked=False)
    t.from_backend(to_client[1000:] + later)
    t.from_client(to_backend[500:] + frame(0x1, b"late", masked=True))
    await _next_iteration()
    sent = frames(written(t.client_transport), masked=False)
    assert [f.opcode for f in sent] == [Opcode.BINARY, Opcode.CLOSE]
    assert Close.parse(sent[-1].data).code == 1001
    got = frames(written(t.up_transport), masked=True)  # the backend's: masked
    assert [f.opcode for f in got] == [Opcode.TEXT, Opcode.CLOSE]
    assert Close.parse(got[-1].data).code == 1001
    # both closes written: the tunnel ends, the client's side lingers (half-close)
    assert t.client.tunnel is None and t.up.tunnel is None
    assert ("write_eof", None) in t.calls("client")
    assert ("close", None) in t.calls("backend")


async def test_at_a_boundary_the_close_frames_go_at_once() -> None:
    t = Tunnel()
    t.from_backend(frame(0x1, b"hello", masked=False))
    t.from_client(frame(0x1, b"hi", masked=True))
    go_away(t.client)
    await _next_iteration()
    assert [f.opcode for f in frames(written(t.client_transport), masked=False)] == [
        Opcode.TEXT,
        Opcode.CLOSE,
    ]
    assert [f.opcode for f in frames(written(t.up_transport), masked=True)] == [
        Opcode.TEXT,
        Opcode.CLOSE,
    ]


async def test_an_endpoint_already_closing_gets_no_second_close_frame() -> None:
    t = Tunnel()
    own_close = frame(0x8, struct.pack("!H", 1000), masked=False)
    t.from_backend(own_close)  # the backend began the closing handshake itself
    go_away(t.client)
    await _next_iteration()
    assert written(t.client_transport) == own_close
    got = frames(written(t.up_transport), masked=True)
    assert [Close.parse(f.data).code for f in got] == [1001]


async def test_a_tunnel_that_is_not_a_websocket_is_closed_without_a_byte_added() -> None:
    for t in (Tunnel(websocket=False), Tunnel()):
        if t.client.ws is not None:
            t.from_backend(bytes((0x83, 0x00)))  # opcode 3: this is not WebSocket framing
        await _next_iteration()
        before = written(t.client_transport)
        go_away(t.client)
        await _next_iteration()
        assert written(t.client_transport) == before
        assert written(t.up_transport) == b""
        assert ("write_eof", None) in t.calls("client")
        assert ("close", None) in t.calls("backend")
