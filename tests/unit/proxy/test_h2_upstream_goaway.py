"""The h2c client's connection after a GOAWAY from the backend (sans-io, two ``h2``
connections wired to each other): the streams up to the GOAWAY's last stream id still get
their DATA and trailers, the PING sent with a graceful GOAWAY is answered, frames queued
before it are not dropped; plain ``h2`` refuses all of that."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import GoAwayFrame, PingFrame

from zeitwork.proxy.h2_upstream import _ClientH2Connection

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def _pair(
    client: h2.connection.H2Connection,
) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the SETTINGS ACKs
    return client, server


def _goaway_then_more(
    client: h2.connection.H2Connection,
) -> tuple[list[h2.events.Event], h2.connection.H2Connection]:
    client, server = _pair(client)
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"first")
    before = server.data_to_send()
    # a graceful GOAWAY as gRPC's (last stream: the highest, a PING), then the rest
    goaway = GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize()
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    server.send_data(sid, b" second")
    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    client.ping(b"queued!!")  # queued on the client, not sent yet, when the GOAWAY comes
    events = client.receive_data(before + goaway + ping + server.data_to_send())
    return events, server


def test_streams_go_on_after_a_goaway_and_its_ping_is_answered() -> None:
    client = _ClientH2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    events, server = _goaway_then_more(client)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "ResponseReceived",
        "DataReceived",
        "ConnectionTerminated",
        "PingReceived",
        "DataReceived",
        "TrailersReceived",
        "StreamEnded",
    ], kinds
    terminated = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert terminated.last_stream_id == 2**31 - 1 and terminated.error_code == 0
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (
        b"first second"
    )
    sent = server.receive_data(client.data_to_send())
    assert [e.ping_data for e in sent if isinstance(e, h2.events.PingReceived)] == [b"queued!!"]
    assert [e.ping_data for e in sent if isinstance(e, h2.events.PingAckReceived)] == [b"12345678"]
    # and the client can still close the connection itself
    client.close_connection()
    assert any(
        isinstance(e, h2.events.ConnectionTerminated)
        for e in server.receive_data(client.data_to_send())
    )


def test_plain_h2_refuses_every_frame_after_a_goaway() -> None:
    """What ``_ClientH2Connection`` works around: if h2 starts taking frames after a GOAWAY,
    this fails and the subclass may go."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    with pytest.raises(h2.exceptions.ProtocolError):
        _goaway_then_more(client)
