"""gRPC end to end: a real ``grpcio`` client over TLS (ALPN h2) to the edge, the edge to the load
balancer (HTTP/1.1, chunked with trailers), the balancer to a real ``grpcio`` server over h2c
(the route's backends have ``protocol: h2c``). Generic handlers with raw-bytes messages: no
protoc step."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.integration.edge.conftest import EdgeFactory, make_edge, upstream  # noqa: F401
from tests.integration.lb.conftest import MakeLB, eventually
from tests.integration.lb.test_discovery import TOKEN, MakeOperator, make_operator  # noqa: F401
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend

SERVICE = "zeitwork.test.Echo"
MIB = 1024 * 1024


class EchoService:
    """The app: unary echo, a failing call with trailing metadata, a server stream that waits
    for the client between messages (so it can only pass if each message is relayed at once),
    and a client stream."""

    def __init__(self) -> None:
        self.proceed: asyncio.Queue[None] = asyncio.Queue()
        self.calls = 0
        self.server: aio.Server | None = None  # the grpcio server it runs in

    async def echo(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.calls += 1
        return request

    async def fail(self, request: bytes, context: aio.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-reason", "told-to"), ("x-bin-bin", b"\x00\x01\xff")))
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, "the precondition failed: " + request.decode()
        )
        raise AssertionError("abort returns never")

    async def fail_after_data(
        self, request: bytes, context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        yield b"first"
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ran out after one")

    async def count(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"message %d" % i
            await asyncio.wait_for(self.proceed.get(), 20)

    async def collect(self, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> bytes:
        digest = hashlib.sha256()
        n = 0
        async for chunk in requests:
            digest.update(chunk)
            n += 1
        return b"%d %s" % (n, digest.hexdigest().encode())

    async def chat(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message.upper()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "FailAfterData": grpc.unary_stream_rpc_method_handler(self.fail_after_data),
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


SIZES = [("grpc.max_receive_message_length", 8 * MIB), ("grpc.max_send_message_length", 8 * MIB)]


@pytest.fixture
async def grpc_app() -> AsyncIterator[tuple[EchoService, int]]:
    service = EchoService()
    server = aio.server(options=SIZES)
    server.add_generic_rpc_handlers((service.handler(),))
    service.server = server
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, port
    await server.stop(None)


@pytest.fixture
async def channel(
    grpc_app: tuple[EchoService, int],
    make_operator: MakeOperator,  # noqa: F811  (set up before the balancer, stopped after it)
    make_lb: MakeLB,
    make_edge: EdgeFactory,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[aio.Channel]:
    _, app_port = grpc_app
    operator = await make_operator()
    operator.publish(
        [
            Route(
                host="grpc.test",
                deployment_id=uuid.uuid4(),
                health_check=HealthCheck(type="tcp"),
                backends=[RouteBackend(address=f"127.0.0.1:{app_port}", protocol="h2c")],
            )
        ]
    )
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    edge = await make_edge(
        LOAD_BALANCER_URL=f"http://127.0.0.1:{lb.port}", EDGE_DOMAINS="grpc.test"
    )
    ca = (tmp_path / "data" / "edge" / "ca" / "ca.crt").read_bytes()
    chan = aio.secure_channel(
        f"127.0.0.1:{edge.ports['https']}",
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[
            ("grpc.ssl_target_name_override", "grpc.test"),
            ("grpc.default_authority", "grpc.test"),
            *SIZES,
        ],
    )
    yield chan
    await chan.close()


def unary(channel: aio.Channel, name: str) -> aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}")


async def test_unary_call_and_a_large_message(
    channel: aio.Channel, grpc_app: tuple[EchoService, int]
) -> None:
    service, _ = grpc_app
    call = unary(channel, "Echo")
    assert await call(b"hello", timeout=20) == b"hello"
    big = bytes(range(256)) * (6 * 1024 + 7)  # ~1.5 MiB, over several windows and frames
    assert len(big) > MIB
    assert await call(big, timeout=30) == big
    # many calls at once on the one client connection (streams multiplexed both hops)
    answers = await asyncio.gather(*(call(b"n%d" % i, timeout=30) for i in range(40)))
    assert answers == [b"n%d" % i for i in range(40)]
    assert service.calls == 42


async def test_error_status_details_and_trailing_metadata_arrive_intact(
    channel: aio.Channel,
) -> None:
    call = unary(channel, "Fail")(b"x=1", timeout=20)
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "the precondition failed: x=1"
    trailing = dict(err.trailing_metadata() or ())
    assert trailing.get("x-reason") == "told-to"
    assert trailing.get("x-bin-bin") == b"\x00\x01\xff"
    # a status after a message (a real trailing HEADERS frame, not a trailers-only answer)
    stream = channel.unary_stream(f"/{SERVICE}/FailAfterData")(b"", timeout=20)
    got = []
    with pytest.raises(aio.AioRpcError) as caught:
        async for message in stream:
            got.append(message)
    assert got == [b"first"]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "ran out after one"


async def test_server_streaming_is_relayed_message_by_message(
    channel: aio.Channel, grpc_app: tuple[EchoService, int]
) -> None:
    service, _ = grpc_app
    stream = channel.unary_stream(f"/{SERVICE}/Count")(b"5", timeout=30)
    got = []
    async for message in stream:
        got.append(message)
        service.proceed.put_nowait(None)  # the server sends the next one only now
    assert got == [b"message %d" % i for i in range(5)]
    assert await stream.code() == grpc.StatusCode.OK


async def test_client_streaming(channel: aio.Channel) -> None:
    chunks = [bytes([i]) * (64 * 1024) for i in range(20)]  # 1.25 MiB in 20 messages

    async def requests() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    answer = await channel.stream_unary(f"/{SERVICE}/Collect")(requests(), timeout=30)
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert answer == b"20 " + digest.encode()


async def test_bidirectional_streaming_ping_pong(channel: aio.Channel) -> None:
    """Each answer arrives before the next request is sent: both directions of the one call
    move at once through every hop."""
    call = channel.stream_stream(f"/{SERVICE}/Chat")(timeout=30)
    for word in (b"one", b"two", b"three"):
        await call.write(word)
        assert await asyncio.wait_for(call.read(), 20) == word.upper()
    await call.done_writing()
    assert await call.read() == aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_call_open_when_the_server_stops_gracefully_runs_to_its_end(
    channel: aio.Channel, grpc_app: tuple[EchoService, int]
) -> None:
    """``server.stop(grace)`` mid-call: the server sends GOAWAY and a PING, and its second
    GOAWAY only once the PING is answered; the open call goes on both ways, then ends OK."""
    service, _ = grpc_app
    assert service.server is not None
    call = channel.stream_stream(f"/{SERVICE}/Chat")(timeout=60)
    await call.write(b"before")
    assert await asyncio.wait_for(call.read(), 20) == b"BEFORE"
    stopping = asyncio.create_task(service.server.stop(grace=60))
    await asyncio.sleep(1.0)  # the GOAWAY, the PING and its ACK, the second GOAWAY
    for word in (b"during", b"the", b"grace"):
        await call.write(word)
        assert await asyncio.wait_for(call.read(), 20) == word.upper()
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 20) == aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    await asyncio.wait_for(stopping, 30)  # it ended with the call, well before its grace
