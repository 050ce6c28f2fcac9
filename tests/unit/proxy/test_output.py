"""The proxy core's output path: writes queued during a loop iteration are handed to the
transport at its end, in order, as few writes as possible; close flushes, abort discards."""

from __future__ import annotations

import asyncio
from typing import Any

from zeitwork.proxy.backends import Backend
from zeitwork.proxy.output import FLUSH_NOW_BYTES
from zeitwork.proxy.server import ClientProtocol, Exchange, OutputFlusher, Proxy
from zeitwork.proxy.types import ClientInfo, RequestHead
from zeitwork.proxy.upstream import UpstreamProtocol


class RecordingTransport:
    """What the core calls on a transport, recorded in order."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False
        self.fail = fail

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.51.100.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: list[bytes]) -> None:
        self.calls.append(("writelines", [bytes(p) for p in parts]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_reading(self) -> bool:
        return True


class NoRoutes:
    def resolve(self, host: str, path: str) -> None:
        return None


def _client(proxy: Proxy) -> tuple[ClientProtocol, RecordingTransport]:
    client = ClientProtocol(proxy, tls=False)
    transport = RecordingTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_iteration_leave_as_one_write_after_it() -> None:
    proxy = Proxy(router=NoRoutes())
    client, transport = _client(proxy)
    client._write(b"HTTP/1.1 200 OK\r\n")
    client._write(b"content-length: 2\r\n\r\n")
    client._write(b"ok")
    assert transport.calls == []  # nothing written while the iteration runs
    await _next_iteration()
    assert transport.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]
    client._write(b"next")
    await _next_iteration()
    assert transport.calls[-1] == ("write", b"next")


async def test_many_parts_go_out_as_writelines_in_order() -> None:
    proxy = Proxy(router=NoRoutes())
    client, transport = _client(proxy)
    parts = [bytes([65 + i]) * 1024 for i in range(20)]
    for part in parts:
        client._write(part)
    await _next_iteration()
    assert transport.calls == [("writelines", parts)]


async def test_a_full_queue_is_written_at_once() -> None:
    # a fast backend can hand over many reads in one iteration: past FLUSH_NOW_BYTES the
    # bytes go to the transport at once, so its back-pressure (pause_writing) starts in time
    proxy = Proxy(router=NoRoutes())
    client, transport = _client(proxy)
    chunk = b"x" * (FLUSH_NOW_BYTES // 4)
    for _ in range(3):
        client._write(chunk)
    assert transport.calls == []
    client._write(chunk)
    assert transport.calls == [("writelines", [chunk] * 4)]
    client._write(b"tail")
    await _next_iteration()
    assert transport.calls[-1] == ("write", b"tail")
    assert client.out == [] and client.out_bytes == 0

    up = UpstreamProtocol(Backend("127.0.0.1:1"), proxy.flusher)
    up_transport = RecordingTransport()
    up.connection_made(up_transport)  # type: ignore[arg-type]
    up.writelines([b"h" * FLUSH_NOW_BYTES])
    assert up_transport.calls == [("write", b"h" * FLUSH_NOW_BYTES)]


async def test_close_flushes_first_and_abort_discards() -> None:
    proxy = Proxy(router=NoRoutes())
    client, transport = _client(proxy)
    client._write(b"last words")
    client.close()
    assert transport.calls == [("write", b"last words"), ("close", None)]
    await _next_iteration()  # the flusher finds nothing left: no second write
    assert transport.calls == [("write", b"last words"), ("close", None)]

    other, other_transport = _client(proxy)
    other._write(b"never sent")
    other.abort()
    await _next_iteration()
    assert other_transport.calls == [("abort", None)]


async def test_half_close_flushes_before_the_eof() -> None:
    proxy = Proxy(router=NoRoutes())
    client, transport = _client(proxy)
    client._write(b"problem")
    client.linger_close()
    assert transport.calls == [("write", b"problem"), ("write_eof", None)]


async def test_upstream_writes_are_queued_and_flushed_before_close() -> None:
    flusher = OutputFlusher()
    up = UpstreamProtocol(Backend("127.0.0.1:1"), flusher)
    transport = RecordingTransport()
    up.connection_made(transport)  # type: ignore[arg-type]
    up.write(b"GET / HTTP/1.1\r\n")
    up.writelines([b"host: a\r\n", b"\r\n"])
    up.writelines([])
    assert transport.calls == []
    await _next_iteration()
    assert transport.calls == [("write", b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")]
    up.write(b"body")
    up.close()
    assert transport.calls[1:] == [("write", b"body"), ("close", None)]
    up.write(b"after close")  # a closed connection takes nothing more
    up.connection_lost(None)
    await _next_iteration()
    assert len(transport.calls) == 3


async def test_a_backend_write_failure_reaches_the_exchange() -> None:
    proxy = Proxy(router=NoRoutes())
    up = UpstreamProtocol(Backend("127.0.0.1:1"), proxy.flusher)
    transport = RecordingTransport(fail=True)
    up.connection_made(transport)  # type: ignore[arg-type]
    head = RequestHead(
        method=b"GET", target=b"/", path="/", host="a", http_version="1.1", headers=[]
    )
    marker = Exchange(head, ClientInfo(peer_ip="127.0.0.1", client_ip="127.0.0.1"))
    up.ex = marker
    up.write(b"GET / HTTP/1.1\r\n\r\n")
    await _next_iteration()
    # aborted, but the exchange is kept so that connection_lost reports the loss (502/retry)
    assert transport.calls == [("abort", None)]
    assert up.ex is marker and up.out == []


async def test_one_broken_transport_does_not_stall_the_others() -> None:
    proxy = Proxy(router=NoRoutes())
    broken, broken_transport = _client(proxy)
    broken_transport.fail = True
    healthy, healthy_transport = _client(proxy)
    broken._write(b"x")
    healthy._write(b"y")
    await _next_iteration()
    assert broken_transport.calls == [("abort", None)]
    assert healthy_transport.calls == [("write", b"y")]
    assert not proxy.flusher.scheduled
