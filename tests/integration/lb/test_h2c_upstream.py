"""The load balancer's h2c client (``proxy.h2_upstream``) against a real HTTP/2 server (an h2
connection on a real socket, written here so that it can misbehave on purpose): streams share a
connection, trailers reach an HTTP/1.1 client in the last chunk, a slow reader shuts the
backend's window instead of filling the balancer's memory, a refused stream is retried, a reset
after the response began truncates it, a client that goes away resets its stream, and streams
open when the server sends a graceful GOAWAY run to their end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame

from tests.integration.lb.conftest import MakeLB, eventually, http, read_response
from tests.integration.lb.test_discovery import TOKEN, MakeOperator, make_operator  # noqa: F401
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend

MIB = 1024 * 1024
BIG = 24 * MIB


class H2App:
    """An h2c server. Paths: ``/echo`` (the request body back, with its sha256 as a trailer),
        ``/trailers``, ``/big`` (BIG bytes, sent as the window allows), ``/refuse-once``,
        ``/reset-mid``, ``/forever`` (data until reset), ``/hold`` (a head and a first part, then
    the rest only after a graceful GOAWAY: see ``shut_down``)."""

    def __init__(self) -> None:
        self.connections = 0
        self.streams = 0
        self.refused = 0
        self.resets: list[int] = []
        self.errors: list[str] = []
        self.blocked = asyncio.Event()  # /big: the window shut with bytes left to send
        self.big_sent = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.held = 0  # /hold streams waiting
        self.shut_down = asyncio.Event()  # set by a test: GOAWAY on the connection of /hold
        self.ping_acked = asyncio.Event()  # the balancer answered the GOAWAY's PING
        self.peer_closed = asyncio.Event()  # the balancer closed the connection of /hold

    async def start(self) -> H2App:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False  # the balancer's tcp checks connect too: only h2 clients count
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytearray] = {}
        paths: dict[int, bytes] = {}
        pending: dict[int, memoryview] = {}  # bytes not sent yet (as the window allows)
        ending: dict[int, list[tuple[bytes, bytes]]] = {}  # trailers once they are sent
        tasks: set[asyncio.Task[None]] = set()
        held: list[int] = []
        finished_held = False

        async def graceful_goaway() -> None:
            # as a gRPC server's graceful stop: GOAWAY (last stream: the highest one opened,
            # no error) and a PING; the held streams finish only after the PING's ACK. Written
            # as raw frames: h2 itself would refuse to send DATA after its own GOAWAY
            await self.shut_down.wait()
            goaway = GoAwayFrame(0, last_stream_id=conn.highest_inbound_stream_id, error_code=0)
            writer.write(goaway.serialize() + PingFrame(0, opaque_data=b"zw-drain").serialize())

        def finish_held() -> None:
            nonlocal finished_held
            finished_held = True
            for sid in held:
                conn.send_data(sid, b"the second part")
                conn.send_headers(sid, [(b"x-done", b"yes")], end_stream=True)
                paths.pop(sid, None)
            held.clear()
            flush()

        def flush() -> None:
            data = conn.data_to_send()
            if data:
                writer.write(data)

        def pump() -> None:
            for sid, left in list(pending.items()):
                rest = left
                while rest:
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if window <= 0:
                        self.blocked.set()
                        break
                    conn.send_data(sid, rest[:window].tobytes())
                    self.big_sent += min(window, len(rest))
                    rest = rest[window:]
                pending[sid] = rest
                if not rest:
                    del pending[sid]
                    trailers = ending.pop(sid, None)
                    if trailers:
                        conn.send_headers(sid, trailers, end_stream=True)
                    else:
                        conn.end_stream(sid)
            flush()

        async def forever(sid: int) -> None:
            with contextlib.suppress(Exception):
                while sid in paths:
                    if conn.local_flow_control_window(sid) > 1024:
                        conn.send_data(sid, b"x" * 1024)
                        flush()
                    await asyncio.sleep(0.01)

        def answer(sid: int) -> None:
            path = paths[sid]
            body = bytes(bodies.pop(sid, b""))
            if path == b"/refuse-once" and self.refused == 0:
                self.refused += 1
                conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                return
            if path == b"/echo":
                conn.send_headers(sid, [(b":status", b"200"), (b"x-len", b"%d" % len(body))])
                ending[sid] = [(b"x-sha256", hashlib.sha256(body).hexdigest().encode())]
                pending[sid] = memoryview(body)
                pump()
            elif path == b"/trailers":
                conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
                conn.send_data(sid, b"part one, ")
                conn.send_data(sid, b"part two")
                conn.send_headers(
                    sid, [(b"x-checksum", b"abc123"), (b"x-n", b"2")], end_stream=True
                )
            elif path == b"/big":
                conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % BIG)])
                pending[sid] = memoryview(bytes(range(256)) * (BIG // 256))
                pump()
            elif path == b"/reset-mid":
                conn.send_headers(sid, [(b":status", b"200")])
                conn.send_data(sid, b"some of it")
                flush()
                loop = asyncio.get_running_loop()
                loop.call_later(
                    0.2, lambda: (conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR), flush())
                )
            elif path == b"/hold":
                conn.send_headers(sid, [(b":status", b"200")])
                conn.send_data(sid, b"the first part, ")
                flush()
                if not held:
                    task = asyncio.get_running_loop().create_task(graceful_goaway())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                held.append(sid)
                self.held += 1
            elif path == b"/forever":
                conn.send_headers(sid, [(b":status", b"200")])
                task = asyncio.get_running_loop().create_task(forever(sid))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                conn.send_headers(
                    sid, [(b":status", b"200"), (b"content-length", b"%d" % len(path))]
                )
                conn.send_data(sid, path, end_stream=True)

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not counted:
                    counted = True
                    self.connections += 1
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.streams += 1
                        fields = dict(event.headers)
                        paths[event.stream_id] = fields[b":path"]
                        assert fields.get(b"te") == b"trailers"
                        assert b":authority" in fields
                        if event.stream_ended is not None:
                            answer(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        if event.stream_ended is not None:
                            answer(event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        if event.stream_id in paths and event.stream_id not in bodies:
                            pass  # answered at DataReceived / RequestReceived
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.error_code)
                        paths.pop(event.stream_id, None)
                        pending.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.WindowUpdated):
                        pump()
                    elif isinstance(event, h2.events.PingAckReceived):
                        if event.ping_data == b"zw-drain":
                            self.ping_acked.set()
                            asyncio.get_running_loop().call_later(0.3, finish_held)
                    elif (
                        isinstance(event, h2.events.ConnectionTerminated)
                        and self.ping_acked.is_set()
                    ):
                        self.peer_closed.set()
                flush()
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError) as exc:
            if counted:  # not the balancer's tcp checks (which may close with a reset)
                self.errors.append(repr(exc) + (" (after GOAWAY)" if finished_held else ""))
        finally:
            for task in tasks:
                task.cancel()
            writer.close()


@pytest.fixture
async def app() -> AsyncIterator[H2App]:
    server = await H2App().start()
    yield server
    await server.stop()


@pytest.fixture
async def lb_port(app: H2App, make_operator: MakeOperator, make_lb: MakeLB) -> int:  # noqa: F811
    operator = await make_operator()
    operator.publish(
        [
            Route(
                host="h2c.test",
                deployment_id=uuid.uuid4(),
                health_check=HealthCheck(type="tcp"),
                backends=[RouteBackend(address=f"127.0.0.1:{app.port}", protocol="h2c")],
            )
        ]
    )
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    return lb.port


async def test_streams_share_one_connection(app: H2App, lb_port: int) -> None:
    answers = await asyncio.gather(
        *(http(lb_port, path=f"/n{i}", host="h2c.test") for i in range(30))
    )
    assert [a.status for a in answers] == [200] * 30
    assert [a.body for a in answers] == [b"/n%d" % i for i in range(30)]
    assert app.streams == 30
    assert app.connections == 1


async def test_upload_and_trailers_reach_an_http1_client(app: H2App, lb_port: int) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB: several of the backend's windows
    r = await http(lb_port, "POST", "/echo", host="h2c.test", body=body)
    assert r.status == 200, (r.body[:300], app.errors)
    assert r.body == body
    assert r.header("x-len") == str(len(body))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb_port)
    try:
        writer.write(b"GET /trailers HTTP/1.1\r\nHost: h2c.test\r\n\r\n")
        raw = b""
        while not raw.endswith(b"\r\n\r\n") or b"0\r\n" not in raw:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, raw
            raw += chunk
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert rest.endswith(b"0\r\nx-checksum: abc123\r\nx-n: 2\r\n\r\n"), rest


async def test_a_slow_reader_shuts_the_backends_window(app: H2App, lb_port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", lb_port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: h2c.test\r\n\r\n")
        # nothing is read yet: the stream reader stops at twice its limit, the socket at its
        # small buffer
        await asyncio.wait_for(app.blocked.wait(), 20)
        await asyncio.sleep(0.5)
        held = app.big_sent
        # what left the backend: the balancer's window for the stream (1 MiB) and the socket
        # buffers (the kernel's, up to a few MiB on loopback); the rest waits in the backend
        assert held < 8 * MIB, held
        await asyncio.sleep(0.5)
        assert app.big_sent == held  # nothing moves while the client reads nothing
        response = await asyncio.wait_for(read_response(reader), 60)
    finally:
        writer.close()
    assert response.status == 200
    assert response.body == bytes(range(256)) * (BIG // 256)


async def test_a_refused_stream_is_retried(app: H2App, lb_port: int) -> None:
    # a POST too: a refused stream was not processed (RFC 9113 8.7)
    r = await http(lb_port, "POST", "/refuse-once", host="h2c.test", body=b"once")
    assert r.status == 200 and r.body == b"/refuse-once"
    assert app.refused == 1 and app.streams == 2


async def test_a_reset_after_the_head_truncates_the_response(app: H2App, lb_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lb_port)
    try:
        writer.write(b"GET /reset-mid HTTP/1.1\r\nHost: h2c.test\r\n\r\n")
        raw = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            raw += chunk
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"some of it" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees the failure
    # the balancer's connection to the app is still good for the next request
    r = await http(lb_port, path="/after", host="h2c.test")
    assert r.status == 200 and app.connections == 1


async def test_a_client_gone_mid_response_resets_its_stream(app: H2App, lb_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lb_port)
    writer.write(b"GET /forever HTTP/1.1\r\nHost: h2c.test\r\n\r\n")
    await asyncio.wait_for(reader.read(1024), 10)
    writer.transport.abort()
    await eventually(lambda: ErrorCodes.CANCEL in app.resets, timeout=10)
    r = await http(lb_port, path="/still", host="h2c.test")
    assert r.status == 200 and app.connections == 1


async def test_streams_open_at_a_graceful_goaway_finish_whole(app: H2App, lb_port: int) -> None:
    async def hold() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb_port)
        try:
            writer.write(b"GET /hold HTTP/1.1\r\nHost: h2c.test\r\n\r\n")
            raw = b""
            while not raw.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in raw:
                chunk = await asyncio.wait_for(reader.read(65536), 20)
                assert chunk, raw
                raw += chunk
        finally:
            writer.close()
        return app.connections, raw

    holds = [asyncio.create_task(hold()) for _ in range(2)]
    await eventually(lambda: app.held == 2, timeout=20)
    assert app.connections == 1
    app.shut_down.set()  # GOAWAY + PING, with both streams open
    await asyncio.wait_for(app.ping_acked.wait(), 20)  # before the fix: a protocol error
    # a new exchange is not sent on the connection that is going away
    r = await http(lb_port, path="/fresh", host="h2c.test")
    assert r.status == 200 and r.body == b"/fresh"
    assert app.connections == 2
    for _, raw in await asyncio.gather(*holds):
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw
        assert b"the first part, " in body and b"the second part" in body, raw
        assert body.endswith(b"0\r\nx-done: yes\r\n\r\n"), raw  # trailers: the stream ended
    assert app.streams == 3  # the old connection got no new stream
    # once its last stream ended, the balancer closes the old connection (its own GOAWAY)
    await asyncio.wait_for(app.peer_closed.wait(), 20)
    assert app.errors == []
