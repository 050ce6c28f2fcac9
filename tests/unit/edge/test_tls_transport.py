"""The edge's TLS layer against an in-memory TLS client, with a recording TCP transport and a
recording client protocol (and once with the edge's own client protocol): admission,
handshake, reading paused and resumed, close_notify both ways, refusal, a handshake that
never completes, the TCP writes a new connection costs, and the SNI name given to the client
protocol."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest

from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca
from zeitwork.edge.engine import EdgeProxy
from zeitwork.edge.metrics import HandshakeCounter
from zeitwork.edge.tls import TlsTerminator
from zeitwork.edge.tls_transport import HandshakeClock, TlsTransport
from zeitwork.proxy.server import ClientProtocol, Proxy

CA, CA_KEY = self_signed_ca("test CA")


class FakeTcp:
    def __init__(self) -> None:
        self.sent = b""
        self.writes = 0
        self.closed = False
        self.aborted = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.sent += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class NoRoute:
    def resolve(self, host: str, path: str) -> None:
        return None


class FakeClient(ClientProtocol):
    """Stands in for the edge's client protocol: a subclass of the core's, so that the
    compiled TLS layer (which checks its type) takes it too, recording what it is given."""

    def __init__(self) -> None:
        super().__init__(Proxy(router=NoRoute()), tls=True)
        self.got = b""
        self.eof = 0
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool | None:
        self.eof += 1
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Caps:
    def __init__(self, room: int) -> None:
        self.room = room
        self.held: list[str] = []

    def acquire(self, ip: str) -> bool:
        if len(self.held) >= self.room:
            return False
        self.held.append(ip)
        return True

    def release(self, ip: str) -> None:
        self.held.remove(ip)


FAILED: list[str] = []


def _layer(
    caps: Caps, timeout: float = 30.0
) -> tuple[TlsTransport, FakeClient, FakeTcp, list[int]]:
    terminator = TlsTerminator(default_domain="a.test")  # clients without SNI get a.test
    terminator.install("a.test", *issue_leaf(["a.test"], ca_cert_pem=CA, ca_key_pem=CA_KEY))
    client, tcp, admitted = FakeClient(), FakeTcp(), []
    layer = TlsTransport(
        client,
        terminator.server_context,
        clock=HandshakeClock(timeout),
        limiter=caps,
        on_admitted=lambda: admitted.append(1),
        on_failed=FAILED.append,
        server_names=terminator.server_names,
    )
    layer.connection_made(tcp)  # type: ignore[arg-type]
    return layer, client, tcp, admitted


def _client_side(
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3, server_hostname: str | None = "a.test"
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    ctx = ssl.create_default_context(cadata=CA)
    ctx.maximum_version = version
    if server_hostname != "a.test":  # no name, or one spelled otherwise: not verified here
        ctx.check_hostname = False
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(inc, out, server_hostname=server_hostname), inc, out


def _shake(
    layer: TlsTransport,
    tcp: FakeTcp,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    server_hostname: str | None = "a.test",
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    tls, inc, out = _client_side(version, server_hostname)
    for _ in range(5):
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            break
        finally:
            if out.pending:
                layer.data_received(out.read())
            inc.write(tcp.sent)
            tcp.sent = b""
    return tls, inc, out


async def test_admits_shakes_hands_and_delivers_in_order() -> None:
    caps = Caps(room=1)
    layer, client, tcp, admitted = _layer(caps)
    assert caps.held == ["192.0.2.7"] and admitted == [1]
    assert client.forced_peer == "192.0.2.7" and client.preadmitted
    tls, inc, out = _shake(layer, tcp)
    assert client.transport is layer and tls.version() == "TLSv1.3"
    assert not layer.clock.shaking  # no deadline once the handshake is done
    tls.write(b"GET / HTTP/1.1\r\n\r\n")
    layer.data_received(out.read())
    assert client.got == b"GET / HTTP/1.1\r\n\r\n"
    # paused: records are kept, not delivered, until reading resumes
    layer.pause_reading()
    assert not tcp.reading
    tls.write(b"second")
    tls.write(b" third")
    layer.data_received(out.read())
    assert client.got == b"GET / HTTP/1.1\r\n\r\n"
    layer.resume_reading()
    assert tcp.reading
    await asyncio.sleep(0)  # delivery resumes on the next iteration
    assert client.got.endswith(b"second third")
    # answers are encrypted into one TCP write per call
    layer.writelines([b"HTTP/1.1 200 OK\r\n", b"content-length: 0\r\n\r\n"])
    inc.write(tcp.sent)
    tcp.sent = b""
    assert tls.read(1024) + tls.read(1024) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    # close sends close_notify, closes TCP, and does not wait for the peer's
    layer.close()
    assert tcp.closed
    inc.write(tcp.sent)
    assert tls.read(1024) == b""  # the server's close_notify (ssl reads it as the end)
    layer.connection_lost(None)
    assert client.lost == [None] and caps.held == []


@pytest.mark.parametrize(
    ("sent", "seen"),
    [("a.test", "a.test"), ("A.Test.", "a.test"), (None, None)],
    ids=["name", "spelled-otherwise", "no-sni"],
)
async def test_the_sni_name_reaches_the_client_protocol(sent: str | None, seen: str | None) -> None:
    layer, client, tcp, _ = _layer(Caps(room=1))
    slot = layer.server_names
    assert slot is not None
    slot.name = "stale.test"  # left by someone else: never taken for this connection's name
    _shake(layer, tcp, server_hostname=sent)
    assert client.transport is layer  # connected, with the name set before connection_made
    assert client.sni == seen
    assert slot.name is None  # taken, nothing left for the next handshake


async def test_a_peer_close_notify_is_the_end_of_input() -> None:
    layer, client, tcp, _ = _layer(Caps(room=5))
    tls, _, out = _shake(layer, tcp)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.unwrap()  # sends the client's close_notify
    layer.data_received(out.read())
    assert client.eof == 1 and tcp.closed  # the client protocol did not keep it open


async def test_over_the_cap_is_let_through_to_be_refused_with_a_status() -> None:
    caps = Caps(room=0)
    layer, client, tcp, admitted = _layer(caps)
    # no place under the caps, but a refusal place: the handshake runs, the request is 503
    assert not tcp.aborted and admitted == [1] and caps.held == []
    assert client.refused and client.proxy.refusing == 1
    layer.connection_lost(None)
    assert client.proxy.refusing == 0 and caps.held == []


async def test_over_the_cap_with_no_refusal_place_is_aborted_before_tls() -> None:
    caps = Caps(room=0)
    client = FakeClient()
    client.proxy.refusing = client.proxy.config.max_refusing  # every refusal place taken
    layer = TlsTransport(
        client,
        TlsTerminator().server_context,
        clock=HandshakeClock(30.0),
        limiter=caps,
        on_admitted=lambda: None,
        on_failed=FAILED.append,
    )
    tcp = FakeTcp()
    layer.connection_made(tcp)  # type: ignore[arg-type]
    assert tcp.aborted and caps.held == [] and not client.refused
    assert client.forced_peer == ""  # never handed to the client protocol
    layer.connection_lost(None)
    assert client.lost == [] and client.proxy.refusing == client.proxy.config.max_refusing


async def test_garbage_and_a_silent_peer_give_their_place_back() -> None:
    """... and each failed handshake is counted once, with its reason."""
    FAILED.clear()
    caps = Caps(room=5)
    layer, client, tcp, _ = _layer(caps)
    layer.data_received(b"\x16\x03\x01\x00\x05hello, not TLS at all\r\n")
    assert tcp.aborted and client.transport is None
    layer.connection_lost(None)
    assert caps.held == [] and client.lost == []
    layer, client, tcp, _ = _layer(caps, timeout=0.01)
    assert layer.clock.shaking == {layer} and layer.clock.timer is not None
    await asyncio.sleep(0.05)
    assert tcp.aborted  # the handshake timeout
    assert not layer.clock.shaking and layer.clock.timer is None  # the clock stopped
    layer.connection_lost(None)
    assert caps.held == []
    layer, client, tcp, _ = _layer(caps)
    layer.connection_lost(ConnectionResetError())  # the peer left mid-handshake
    assert FAILED == ["error", "timeout", "closed"]
    # a completed handshake counts no failure; one over the caps shakes hands too (to be
    # answered 503), so its leaving mid-handshake counts as any other's
    layer, client, tcp, _ = _layer(caps)
    _shake(layer, tcp)
    layer.connection_lost(None)
    assert FAILED == ["error", "timeout", "closed"]
    _layer(Caps(room=0))[0].connection_lost(None)
    assert FAILED == ["error", "timeout", "closed", "closed"]


async def test_tls13_tickets_leave_with_the_first_answer_and_the_last_with_close_notify() -> None:
    layer, client, tcp, _ = _layer(Caps(room=5))
    tls, inc, out = _shake(layer, tcp)
    assert tls.version() == "TLSv1.3"
    # the client's Finished completed the handshake: the tickets OpenSSL made wait
    assert tcp.sent == b"" and layer.outgoing.pending
    tls.write(b"GET / HTTP/1.1\r\n\r\n")
    layer.data_received(out.read())
    assert client.got == b"GET / HTTP/1.1\r\n\r\n" and tcp.sent == b""
    writes = tcp.writes
    layer.write(b"first answer")
    assert tcp.writes == writes + 1  # tickets and answer in one write
    inc.write(tcp.sent)
    tcp.sent = b""
    assert tls.read(1024) == b"first answer"
    assert tls.session is not None and tls.session.has_ticket
    # corked (the edge's client protocol closing): the last answer waits for close_notify
    layer.corked = True
    layer.write(b"last answer")
    assert tcp.writes == writes + 1 and tcp.sent == b""
    layer.close()
    assert tcp.writes == writes + 2 and tcp.closed
    inc.write(tcp.sent)
    assert tls.read(1024) == b"last answer"
    assert tls.read(1024) == b""  # then the close_notify


async def test_tls12_handshake_ends_with_the_servers_finished_sent_at_once() -> None:
    layer, client, tcp, _ = _layer(Caps(room=5))
    tls, _, _ = _shake(layer, tcp, ssl.TLSVersion.TLSv1_2)  # completes only if it was sent
    assert tls.version() == "TLSv1.2" and client.transport is layer
    assert not layer.outgoing.pending and not layer.tickets_held


async def test_the_edge_client_protocol_answers_and_closes_in_one_write() -> None:
    """A new HTTPS connection answered with ``Connection: close`` through the edge's own client
    protocol: after the server's first flight, one TCP write carries the tickets, the answer
    and the close_notify."""

    terminator = TlsTerminator()
    terminator.install("a.test", *issue_leaf(["a.test"], ca_cert_pem=CA, ca_key_pem=CA_KEY))
    proxy = EdgeProxy(handshakes=HandshakeCounter(), router=NoRoute())  # type: ignore[arg-type]
    tcp = FakeTcp()
    layer = proxy.tls_protocol_factory(terminator.server_context, 30, terminator.server_names)()
    layer.connection_made(tcp)  # type: ignore[arg-type]
    tls, inc, out = _shake(layer, tcp)
    client = layer.get_protocol()
    assert client.info.sni == "a.test" and client.info.tls  # what policies are given
    writes = tcp.writes
    tls.write(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    layer.data_received(out.read())
    for _ in range(3):
        await asyncio.sleep(0)  # the core writes at the end of the loop iteration
    assert tcp.closed and tcp.writes == writes + 1
    inc.write(tcp.sent)
    answer = b""
    while chunk := tls.read(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 ") and b"connection: close" in answer.lower()
    assert tls.session is not None and tls.session.has_ticket
    layer.connection_lost(None)
    assert proxy.handshakes.completed == 1 and not proxy.connections
