"""HTTP/2 through the real edge to an HTTP/1.1 upstream: curl, h2load and a raw h2 client.

ALPN h2 on TLS and h2c with prior knowledge; bodies byte-exact both ways under flow control;
streams interleaved on one connection; the stream limit (REFUSED_STREAM), rapid reset
(GOAWAY ENHANCE_YOUR_CALM) and GOAWAY on drain; the edge's policies on h2 requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import PingFrame

from tests.integration.edge.conftest import EdgeFactory, Upstream, admin_get, wait_for
from tests.integration.edge.test_workers import _edge_process, _reap, _wait_line

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("h2load") is None,
    reason="needs curl and h2load (nghttp2-client; scripts/bootstrap.sh installs it)",
)

_BLOCK = bytes(range(256)) * 256  # the Upstream helper's /big/N pattern


def _big(size: int) -> bytes:
    return (_BLOCK * (size // len(_BLOCK) + 1))[:size]


def _ca(tmp_path: Path) -> Path:
    return tmp_path / "data" / "edge" / "ca" / "ca.crt"


async def _run(*argv: str, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def _curl_tls(port: int, tmp_path: Path, *args: str) -> list[str]:
    return [
        "curl",
        "-sS",
        "--http2",
        "--cacert",
        str(_ca(tmp_path)),
        "--resolve",
        f"app.test:{port}:127.0.0.1",
        *args,
    ]


class H2Client:
    """A raw HTTP/2 client over TLS (ALPN h2) or h2c, on the h2 library: frames are sent as
    the test says and every event is kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, header_encoding=None, validate_outbound_headers=False
            )
        )
        self.events: list[Any] = []
        self.bodies: dict[int, bytearray] = {}
        self.closed = False

    @classmethod
    async def open(
        cls, port: int, ca: Path | None, *, window: int | None = None, rcvbuf: int = 0
    ) -> H2Client:
        ctx: ssl.SSLContext | None = None
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.set_alpn_protocols(["h2"])
        sock = socket.socket()
        if rcvbuf:  # a small receive buffer: what the client does not read backs up soon
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=ctx, server_hostname="app.test" if ctx else None
        )
        if ctx is not None:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        if window is not None:
            client.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        client.conn.initiate_connection()
        await client.send()
        return client

    def headers(self, path: str, *, method: str = "GET", extra: Any = ()) -> list[Any]:
        return [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"app.test"),
            (b":path", path.encode()),
            *extra,
        ]

    def request(self, path: str, **kwargs: Any) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, **kwargs), end_stream=True)
        return sid

    async def send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def read_until(self, done: Callable[[], bool], *, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                if self.closed:
                    raise ConnectionError("closed before the condition held")
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    continue
                for event in self.conn.receive_data(data):
                    self.events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                await self.send()

    def ended(self, sid: int) -> bool:
        return any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid
            for e in self.events
        )

    def status(self, sid: int) -> int:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                return int(dict(e.headers)[b":status"])
        return 0

    def response_headers(self, sid: int) -> dict[bytes, bytes]:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                return dict(e.headers)
        return {}

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_curl_negotiates_h2_and_gets_the_body_and_the_edge_headers(
    make_edge: EdgeFactory, upstream: Upstream, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    port = edge.ports["https"]
    rc, out, err = await _run(
        *_curl_tls(
            port,
            tmp_path,
            "-D",
            "-",
            "-w",
            "\n%{http_version}",
            f"https://app.test:{port}/hello?x=1",
        )
    )
    assert rc == 0, err
    head, _, rest = out.partition(b"\r\n\r\n")
    body, _, version = rest.rpartition(b"\n")
    assert version == b"2"
    assert head.startswith(b"HTTP/2 200")
    assert body == b"ok /hello?x=1"
    assert b"strict-transport-security: max-age=31536000" in head  # the edge's policy
    assert b"x-request-id: " in head
    # the app got the forwarding headers and an HTTP/1.1 request with the authority as Host
    seen = upstream.seen[-1]
    assert seen[b"host"] == f"app.test:{port}".encode()
    assert seen[b"x-forwarded-proto"] == b"https"
    assert seen[b"x-forwarded-for"] == b"127.0.0.1"


async def test_http2_off_offers_only_http1(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_HTTP2="false")
    port = edge.ports["https"]
    rc, out, err = await _run(
        *_curl_tls(
            port, tmp_path, "-o", "/dev/null", "-w", "%{http_version}", f"https://app.test:{port}/"
        )
    )
    assert rc == 0, err
    assert out == b"1.1"


async def test_h2c_with_prior_knowledge_only_when_enabled(make_edge: EdgeFactory) -> None:
    # a host without a certificate of its own: served over plain HTTP, not redirected
    url_args = ["-H", "Host: plain.test", "-w", "\n%{http_version}"]
    off = await make_edge(EDGE_DOMAINS="app.test")
    rc, out, _ = await _run(
        "curl",
        "-sS",
        "--http2-prior-knowledge",
        *url_args,
        f"http://127.0.0.1:{off.ports['http']}/c",
    )
    assert rc != 0 or not out.endswith(b"\n2")  # the preface is no HTTP/1.1 request
    on = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2C="true")
    rc, out, err = await _run(
        "curl",
        "-sS",
        "--http2-prior-knowledge",
        *url_args,
        f"http://127.0.0.1:{on.ports['http']}/c",
    )
    assert rc == 0, err
    assert out == b"ok /c\n2"
    # HTTP/1.1 on the same port still works
    rc, out, err = await _run(
        "curl", "-sS", "--http1.1", *url_args, f"http://127.0.0.1:{on.ports['http']}/d"
    )
    assert rc == 0, err
    assert out == b"ok /d\n1.1"


@pytest.mark.slow
async def test_h2load_many_streams_all_succeed(make_edge: EdgeFactory) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_DEFAULT_DOMAIN="app.test")
    rc, out, err = await _run(
        "h2load", "-n", "2000", "-c", "4", "-m", "10", f"https://127.0.0.1:{edge.ports['https']}/x"
    )
    assert rc == 0, err
    assert b"Application protocol: h2" in out
    assert b"2000 succeeded, 0 failed, 0 errored" in out, out
    assert b"status codes: 2000 2xx" in out, out


@pytest.mark.slow
async def test_five_mib_download_and_upload_are_byte_exact(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    # small windows on the edge's side: the upload crosses many WINDOW_UPDATEs
    edge = await make_edge(
        EDGE_DOMAINS="app.test", EDGE_H2_STREAM_WINDOW=65535, EDGE_H2_CONNECTION_WINDOW=65535
    )
    port = edge.ports["https"]
    size = 5 * 1024 * 1024
    target = tmp_path / "down.bin"
    rc, _, err = await _run(
        *_curl_tls(port, tmp_path, "-o", str(target), f"https://app.test:{port}/big/{size}")
    )
    assert rc == 0, err
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(_big(size)).digest()
    payload = tmp_path / "up.bin"
    payload.write_bytes(hashlib.sha256(b"seed").digest() * (size // 32))
    rc, out, err = await _run(
        *_curl_tls(
            port, tmp_path, "--data-binary", f"@{payload}", f"https://app.test:{port}/upload"
        )
    )
    assert rc == 0, err
    assert out == b"%d %s" % (size, hashlib.sha256(payload.read_bytes()).hexdigest().encode())


async def test_streams_interleave_and_a_shut_window_holds_the_response(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    size = 2_000_000
    sids = [client.request(f"/big/{size}") for _ in range(6)]
    await client.send()
    await client.read_until(lambda: all(client.ended(s) for s in sids))
    for sid in sids:
        assert client.status(sid) == 200
        assert bytes(client.bodies[sid]) == _big(size)
    order = [e.stream_id for e in client.events if isinstance(e, h2.events.DataReceived)]
    first_done = max(i for i, s in enumerate(order) if s == sids[0])
    assert set(order[:first_done]) == set(sids)  # the others moved before the first ended
    await client.close()


async def test_a_client_that_never_opens_its_window_gets_only_the_window(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path), window=16384)
    # no acknowledgement at all: read raw frames without giving credit back
    sid = client.request("/big/1000000")
    await client.send()
    received = 0
    async with asyncio.timeout(5):
        while received < 16384:
            data = await client.reader.read(65536)
            assert data
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
            await client.send()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):  # more must not come: the window is shut
            data = await client.reader.read(65536)
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
    assert received == 16384
    client.conn.increment_flow_control_window(2_000_000, stream_id=sid)
    client.conn.increment_flow_control_window(2_000_000)
    await client.send()
    await client.read_until(lambda: client.ended(sid))
    assert len(client.bodies[sid]) + 16384 == 1_000_000
    await client.close()


async def test_streams_past_the_limit_are_refused(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2_MAX_STREAMS=10)
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    # all at once, before the client has read the edge's SETTINGS
    sids = [client.request(f"/s{i}") for i in range(15)]
    await client.send()
    await client.read_until(lambda: all(client.ended(s) for s in sids))
    refused = [
        e.stream_id
        for e in client.events
        if isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.REFUSED_STREAM
    ]
    assert refused == sids[10:]
    assert [client.status(s) for s in sids[:10]] == [200] * 10
    # the connection goes on
    again = client.request("/after")
    await client.send()
    await client.read_until(lambda: client.ended(again))
    assert client.status(again) == 200
    await client.close()


async def test_streams_past_the_limit_after_settings_end_the_connection(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2_MAX_STREAMS=2)
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))

    def settled() -> bool:
        return any(isinstance(e, h2.events.RemoteSettingsChanged) for e in client.events)

    await client.read_until(settled)  # the edge's SETTINGS are in and acknowledged
    assert client.conn.remote_settings.max_concurrent_streams == 2
    client.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    client.conn.remote_settings.acknowledge()  # this client ignores the limit it was given
    sids = [client.request(f"/s{i}") for i in range(3)]
    await client.send()
    with contextlib.suppress(ConnectionError):
        await client.read_until(lambda: client.goaway() is not None)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert not any(client.status(s) for s in sids[2:])
    await client.close()
    # the listener goes on
    other = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    sid = other.request("/fine")
    await other.send()
    await other.read_until(lambda: other.ended(sid))
    assert other.status(sid) == 200
    await other.close()


async def test_rapid_reset_gets_goaway_and_others_are_served(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2_MAX_RESETS=50)
    port = edge.ports["https"]
    attacker = await H2Client.open(port, _ca(tmp_path))
    for _ in range(200):
        sid = attacker.request("/slow")
        attacker.conn.reset_stream(sid, ErrorCodes.CANCEL)
    await attacker.send()
    with contextlib.suppress(ConnectionError):
        await attacker.read_until(lambda: attacker.goaway() is not None)
    goaway = attacker.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await attacker.close()
    other = await H2Client.open(port, _ca(tmp_path))
    sid = other.request("/fine")
    await other.send()
    await other.read_until(lambda: other.ended(sid))
    assert other.status(sid) == 200 and bytes(other.bodies[sid]) == b"ok /fine"
    await other.close()


async def test_rate_limits_and_bad_requests_apply_per_stream(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", RATE_LIMIT_RPS=0.01, RATE_LIMIT_BURST=3)
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    sids = [client.request(f"/r{i}") for i in range(5)]
    await client.send()
    await client.read_until(lambda: all(client.ended(s) for s in sids))
    statuses = sorted(client.status(s) for s in sids)
    assert statuses == [200, 200, 200, 429, 429]
    limited = next(s for s in sids if client.status(s) == 429)
    assert client.response_headers(limited).get(b"retry-after") is not None
    # a Host naming another authority is the stream's 400, the connection goes on
    bad = client.request("/b", extra=[(b"host", b"evil.test")])
    await client.send()
    await client.read_until(lambda: client.ended(bad))
    assert client.status(bad) == 400
    assert client.response_headers(bad)[b"content-type"] == b"application/problem+json"
    await client.close()
    _, metrics = await admin_get(edge, "/metrics")
    assert b"429" in metrics


@pytest.mark.slow
async def test_drain_sends_goaway_and_finishes_streams_in_flight(
    make_edge: EdgeFactory, upstream: Upstream
) -> None:
    edge = await make_edge(
        EDGE_DOMAINS="app.test", EDGE_DEFAULT_DOMAIN="app.test", EDGE_DRAIN_TIMEOUT=20
    )
    size = 64 * 1024 * 1024
    # small windows make the download last (nghttp reads on after GOAWAY, as it must)
    proc = await asyncio.create_subprocess_exec(
        *("nghttp", "-nv", "-w", "16", "-W", "16"),
        f"https://127.0.0.1:{edge.ports['https']}/big/{size}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def requested() -> bool:
        return bool(upstream.seen)

    await wait_for(requested)
    stopping = asyncio.create_task(edge.stop())
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
        await stopping
    assert proc.returncode == 0, err
    goaway = out.find(b"recv GOAWAY frame")
    assert goaway >= 0, out[-2000:]
    assert b"last_stream_id=13, error_code=NO_ERROR" in out[goaway : goaway + 300]
    # the stream in flight still ended whole after the GOAWAY
    ended = out.rfind(b"; END_STREAM")
    assert ended > goaway
    received = sum(
        int(line.split(b"length=")[1].split(b",")[0])
        for line in out.splitlines()
        if b"recv DATA frame" in line
    )
    assert received == size


class ChunkedApp:
    """An HTTP/1.1 app that reads a chunked request body and answers chunked, with trailers
    (``x-digest``: the SHA-256 of the body it read; ``grpc-status: 0``)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.heads: list[bytes] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            body = bytearray()
            if b"transfer-encoding: chunked" in head.lower():
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                await reader.readuntil(b"\r\n")
            digest = hashlib.sha256(body).hexdigest().encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Digest: %s\r\ngrpc-status: 0\r\n\r\n" % digest
            )
            await writer.drain()
        writer.close()


async def test_a_body_without_length_goes_chunked_and_trailers_come_back(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    app = ChunkedApp()
    port = await app.start()
    try:
        edge = await make_edge(
            EDGE_DOMAINS="app.test", LOAD_BALANCER_URL=f"http://127.0.0.1:{port}"
        )
        client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, client.headers("/t", method="POST"))
        await client.send()
        body = b"x" * 100_000
        # the edge's SETTINGS and WINDOW_UPDATE open its windows past the default 64 KiB
        await client.read_until(lambda: client.conn.local_flow_control_window(sid) > len(body))
        for start in range(0, len(body), 10_000):
            client.conn.send_data(sid, body[start : start + 10_000])
        client.conn.end_stream(sid)
        await client.send()
        await client.read_until(lambda: client.ended(sid))
        assert client.status(sid) == 200
        assert bytes(client.bodies[sid]) == b"hello"
        trailers = [e for e in client.events if isinstance(e, h2.events.TrailersReceived)]
        assert len(trailers) == 1
        assert dict(trailers[0].headers) == {
            b"x-digest": hashlib.sha256(body).hexdigest().encode(),
            b"grpc-status": b"0",
        }
        assert b"transfer-encoding: chunked" in app.heads[0]
        await client.close()
    finally:
        await app.stop()


async def test_an_oversized_header_list_is_refused(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2_MAX_HEADER_LIST=4096)
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    # many small fields that HPACK would send as a few bytes each once indexed (a bomb)
    sid = client.request("/bomb", extra=[(b"x-a", b"v" * 200)] * 40)
    await client.send()
    with contextlib.suppress(ConnectionError):
        await client.read_until(lambda: client.goaway() is not None or client.ended(sid))
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await client.close()
    other = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    fine = other.request("/fine")
    await other.send()
    await other.read_until(lambda: other.ended(fine))
    assert other.status(fine) == 200
    await other.close()


async def test_an_idle_connection_gets_goaway_then_closes(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_IDLE_TIMEOUT=0.5)
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    sid = client.request("/once")
    await client.send()
    await client.read_until(lambda: client.ended(sid))
    with contextlib.suppress(ConnectionError):
        await client.read_until(lambda: client.closed, timeout=5)
    goaway = client.goaway()
    assert goaway is not None
    assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == sid
    assert client.closed
    await client.close()


async def test_a_connection_over_the_caps_gets_503_on_its_stream_then_goaway(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_MAX_CONNECTIONS_PER_IP=1)
    held = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    over = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    sid = over.request("/over")
    await over.send()
    with contextlib.suppress(ConnectionError):
        await over.read_until(lambda: over.ended(sid) and over.goaway() is not None)
    assert over.status(sid) == 503
    assert over.response_headers(sid)[b"retry-after"] == b"5"
    goaway = over.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
    await over.close()
    # the connection within the caps is served
    ok = held.request("/held")
    await held.send()
    await held.read_until(lambda: held.ended(ok))
    assert held.status(ok) == 200
    await held.close()


@pytest.mark.slow
async def test_sigterm_sends_goaway_and_the_stream_in_flight_ends_whole(
    upstream: Upstream, tmp_path: Path
) -> None:
    proc = _edge_process(
        upstream, tmp_path, EDGE_DEFAULT_DOMAIN="app.test", EDGE_DRAIN_TIMEOUT="20"
    )
    log: list[str] = []
    try:
        started = await asyncio.to_thread(_wait_line, proc, r"edge.started.* https=(\d+)", log)
        size = 64 * 1024 * 1024
        client = await asyncio.create_subprocess_exec(
            *("nghttp", "-nv", "-w", "16", "-W", "16"),
            f"https://127.0.0.1:{started.group(1)}/gated/{size}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def requested() -> bool:
            return bool(upstream.seen)

        await wait_for(requested)
        proc.send_signal(signal.SIGTERM)
        # the second half of the body waits until the edge is stopping (and a while after, for
        # its GOAWAY to go out), so the stream is in flight when the GOAWAY is sent: a whole
        # 64 MiB took 0.34 s on the compiled core, less than the signal took to be handled
        await asyncio.to_thread(_wait_line, proc, r"edge.stopping", log)
        await asyncio.sleep(1.5)
        upstream.gate.set()
        async with asyncio.timeout(30):
            out, err = await client.communicate()
        assert client.returncode == 0, err
        assert await asyncio.to_thread(proc.wait, 15) == 0
        goaway = out.find(b"recv GOAWAY frame")
        assert goaway >= 0, out[-2000:]
        assert b"error_code=NO_ERROR" in out[goaway : goaway + 300]
        assert out.rfind(b"; END_STREAM") > goaway
        received = sum(
            int(line.split(b"length=")[1].split(b",")[0])
            for line in out.splitlines()
            if b"recv DATA frame" in line
        )
        assert received == size
    finally:
        _reap(proc)


async def test_garbage_after_the_preface_gets_goaway_protocol_error(
    make_edge: EdgeFactory,
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_H2C="true")
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
    # the preface, then a frame header announcing a SETTINGS frame of a bad length
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00xxxxx")
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()  # until the edge closes
    frames = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    frames.initiate_connection()
    events = frames.receive_data(data)
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == ErrorCodes.FRAME_SIZE_ERROR
    writer.close()
    # the listener goes on
    client = await H2Client.open(edge.ports["http"], None)
    sid = client.request("/next", extra=[])
    await client.send()
    await client.read_until(lambda: client.ended(sid))
    assert client.status(sid) in (200, 308)
    await client.close()


async def test_a_browser_gets_the_edges_html_error_page_on_a_stream(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    sid = client.request("/x", extra=[(b"accept", b"text/html"), (b"host", b"other.test")])
    await client.send()
    await client.read_until(lambda: client.ended(sid))
    assert client.status(sid) == 400
    assert client.response_headers(sid)[b"content-type"] == b"text/html; charset=utf-8"
    assert b"<html" in bytes(client.bodies[sid]).lower()
    await client.close()


async def test_expect_100_continue_is_an_informational_response(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path))
    body = b"y" * 1000
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(
        sid,
        client.headers(
            "/upload",
            method="POST",
            extra=[(b"content-length", b"%d" % len(body)), (b"expect", b"100-continue")],
        ),
    )
    await client.send()

    def continued() -> bool:
        return any(isinstance(e, h2.events.InformationalResponseReceived) for e in client.events)

    await client.read_until(continued)
    client.conn.send_data(sid, body, end_stream=True)
    await client.send()
    await client.read_until(lambda: client.ended(sid))
    assert client.status(sid) == 200
    assert bytes(client.bodies[sid]) == b"%d %s" % (
        len(body),
        hashlib.sha256(body).hexdigest().encode(),
    )
    await client.close()


@pytest.mark.slow
async def test_a_ping_flood_from_a_client_that_never_reads_is_not_buffered(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    client = await H2Client.open(edge.ports["https"], _ca(tmp_path), rcvbuf=4096)
    proxy = edge.proxy
    assert proxy is not None

    async def connected() -> bool:
        return len(proxy.connections) == 1

    await wait_for(connected)
    (conn,) = proxy.connections
    flood = PingFrame(0, opaque_data=b"12345678").serialize() * 20_000  # 340 KB a write
    largest = 0

    async def sample() -> None:
        nonlocal largest
        while True:
            transport = conn.transport
            if transport is not None:
                largest = max(largest, transport.get_write_buffer_size())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8):
                while True:  # the client never reads the PING ACKs
                    client.writer.write(flood)
                    await client.writer.drain()
    finally:
        sampler.cancel()
    # the edge stopped reading once its socket took no more: the ACKs it holds stay small
    assert conn.transport is not None and not conn.transport.is_reading()
    assert largest < 2 * 1024 * 1024, largest
    client.writer.transport.abort()
