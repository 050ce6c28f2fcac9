"""The server side of an HTTP/2 connection, in memory: the ``h2`` library as the edge drives it
now (``proxy.http2``: its configuration and our HPACK encoder) beside ``ngh2`` (libnghttp2)
on the same exchange: ``python benchmarks/h2_server.py`` (``--requests``, ``--streams``,
``--body``, ``--rounds``).

One client byte stream is made first with ``h2`` as a client (what h2load sends: the preface,
SETTINGS, then ``--streams`` GET requests at a time with h2load's fields, and a connection
WINDOW_UPDATE that gives back what the answers take), then fed to each server in the pieces a
socket would have read (one batch of requests per piece). For each request the server decodes
the fields, answers with a HEADERS frame (the edge's usual six response fields) and one DATA
frame of ``--body`` bytes ending the stream, and takes its output (``data_to_send``) once per
piece, as the edge's flusher does once per event-loop iteration. Nothing else runs: no
sockets, no TLS, no proxy core, so the figures are the protocol library's cost per request,
the part of the edge's CPU that changes with the library. Printed: requests per CPU-second
(process time), best of ``--rounds``, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import ngh2

from zeitwork.proxy.h2_hpack import HeaderEncoder

_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.test"),
    (b":path", b"/"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def _response(body: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"),
        (b"content-type", b"text/html"),
        (b"content-length", b"%d" % body),
        (b"date", b"Mon, 07 Dec 2026 16:00:00 GMT"),
        (b"x-request-id", b"3f2b9c1d6a7e4f0b8c5d2e1a9b7c6d5e"),
        (b"strict-transport-security", b"max-age=31536000"),
    ]


def client_reads(requests: int, streams: int, body: int) -> list[bytes]:
    """The client's bytes, one entry per socket read at the server."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30},
    )
    conn.initiate_connection()
    reads = [conn.data_to_send()]
    sent = 0
    while sent < requests:
        batch = min(streams, requests - sent)
        for _ in range(batch):
            conn.send_headers(conn.get_next_available_stream_id(), _REQUEST, end_stream=True)
        conn.increment_flow_control_window(batch * body)  # what the answers take
        reads.append(conn.data_to_send())
        sent += batch
    return reads


def serve_h2(reads: list[bytes], body: int) -> int:
    """The current path: ``h2`` configured as ``proxy.http2`` does, our encoder."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    encoder: Any = HeaderEncoder()
    conn.encoder = encoder
    conn.initiate_connection()
    conn.data_to_send()
    headers = _response(body)
    payload = b"x" * body
    answered = 0
    for data in reads:
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                sid = event.stream_id
                conn.send_headers(sid, headers)
                conn.send_data(sid, payload, end_stream=True)
                answered += 1
        conn.data_to_send()
    return answered


def serve_ngh2(reads: list[bytes], body: int) -> int:
    """The same exchange on ``ngh2`` (libnghttp2)."""
    conn = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    conn.initiate_connection({ngh2.Setting.MAX_CONCURRENT_STREAMS: 100})
    conn.data_to_send()
    headers = _response(body)
    payload = b"x" * body
    answered = 0
    request_received = ngh2.RequestReceived
    for data in reads:
        conn.receive_data(data)
        for event in conn.events():
            if type(event) is request_received:
                sid = event.stream_id
                conn.send_response(sid, headers)
                conn.send_data(sid, payload, end_stream=True)
                answered += 1
        conn.data_to_send()
    return answered


def measure(serve: Callable[[list[bytes], int], int], reads: list[bytes], body: int) -> float:
    start = time.process_time()
    answered = serve(reads, body)
    return answered / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reads = client_reads(args.requests, args.streams, args.body)
    expected = args.requests
    for serve in (serve_h2, serve_ngh2):  # each answers every request
        assert serve(reads[: 2 + 1], args.body) == min(expected, 2 * args.streams)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, serve in (("h2", serve_h2), ("ngh2", serve_ngh2)):
            gc.collect()
            best[name] = max(best.get(name, 0.0), measure(serve, reads, args.body))
    print(
        f"{args.requests} requests, {args.streams} streams per read, {args.body}-byte bodies, "
        f"best of {args.rounds}"
    )
    for name, rate in best.items():
        print(f"  {name:5} {rate:10,.0f} requests per CPU-second  {1e6 / rate:6.1f} us each")
    print(f"  ngh2 / h2: {best['ngh2'] / best['h2']:.1f}x")


if __name__ == "__main__":
    main()
