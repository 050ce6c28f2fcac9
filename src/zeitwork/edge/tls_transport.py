"""The HTTPS listener's TLS layer: OpenSSL through two memory BIOs, between the TCP transport
and the edge's client protocol.

The event loop's own TLS layer (``create_server(ssl=...)``, uvloop's ``SSLProtocol``) is a
general one: an application transport object on top of a protocol object, a handshake timer
and a waiter future per connection, extra information gathered after the handshake, flow
control in both directions, and a shutdown that waits for the peer's close_notify under a
timer of its own. Measured on new connections, that machinery cost about as much as the
handshake work in OpenSSL for a resumed session. This layer does only what the edge needs:

- it is the TCP connection's protocol and the client protocol's transport at once;
- a connection is admitted under the connection caps when TCP accepts it, before the
  handshake (one over a cap is aborted before OpenSSL sees a byte of it), and gives its
  place back when the TCP connection ends, handshake completed or not;
- ``EDGE_HANDSHAKE_TIMEOUT``: one ``HandshakeClock`` per listener sweeps the connections still
  shaking hands (a set add and discard per connection instead of a timer each);
- decrypted data goes to the client protocol as it comes, while it does not pause reading;
  what it writes is encrypted and handed to TCP in one write per call (the core calls once
  per event-loop iteration); TCP's back-pressure reaches the client protocol as is;
- ``close`` sends close_notify and closes TCP once written, without waiting for the peer's
  (as HAProxy and nginx do); a peer's close_notify or FIN is the client's end of input;
- fewer TCP writes per connection: TLS 1.3 session tickets, which OpenSSL makes when the
  handshake completes and which no client waits for, leave with the first response instead
  of in a write of their own; and a response written just before ``close`` (``corked``, set
  by the edge's client protocol) leaves in one write with the close_notify. A new
  connection answered with ``Connection: close`` thus costs two TCP writes instead of four.

The SNI callback (``edge.tls``) receives the ``_ssl`` object itself and may switch its
context; the name it was given comes back through a ``ServerNameSlot``. Compiled with the
proxy core (``hatch_build.py``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from zeitwork.proxy.server import ClientProtocol, peer_address
from zeitwork.proxy.types import ConnectionLimiter

_READ_SIZE = 16384  # one TLS record at most per read: a larger buffer is only allocated and shrunk


HANDSHAKE_FAILURES = ("error", "timeout", "closed")


class HandshakeCounter:
    """TLS handshakes started (on admitted connections), completed, and failed by reason:
    ``error`` (refused version, unknown name, not TLS), ``timeout``
    (``EDGE_HANDSHAKE_TIMEOUT``), ``closed`` (the peer went away first)."""

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.failed = dict.fromkeys(HANDSHAKE_FAILURES, 0)

    def start(self) -> None:
        self.started += 1

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1


class ServerNameSlot:
    """The TLS server name (SNI) of the handshake being advanced right now.

    The SNI callback (``edge.tls``) gets the ``_ssl`` object, which takes no attributes, so it
    puts the name here instead; the TLS layer empties the slot before each ``do_handshake``
    call and takes what is in it after, the callback having run within that same call. The
    name reaches the client protocol before ``connection_made`` (``ClientInfo.sni``)."""

    def __init__(self) -> None:
        self.name: str | None = None


class HandshakeClock:
    """The handshake deadlines of one listener's connections, on one timer that runs only while
    some connection is shaking hands: a connection is aborted between ``timeout`` and
    ``timeout`` plus a quarter of it (at most a second) after it was admitted."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(1.0, timeout / 4)
        self.shaking: set[TlsTransport] = set()
        self.timer: asyncio.TimerHandle | None = None

    def start(self, layer: TlsTransport) -> None:
        loop = asyncio.get_running_loop()
        layer.deadline = loop.time() + self.timeout
        self.shaking.add(layer)
        if self.timer is None:
            self.timer = loop.call_later(self.tick, self._sweep)

    def done(self, layer: TlsTransport) -> None:
        self.shaking.discard(layer)

    def _sweep(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for layer in [layer for layer in self.shaking if layer.deadline <= now]:
            self.shaking.discard(layer)
            layer.expire()
        if self.shaking:
            self.timer = loop.call_later(self.tick, self._sweep)


class TlsTransport:
    """One HTTPS connection: protocol of the TCP transport, transport of ``client``."""

    def __init__(
        self,
        client: ClientProtocol,
        context: ssl.SSLContext,
        *,
        clock: HandshakeClock,
        limiter: ConnectionLimiter | None,
        on_admitted: Callable[[], None],
        on_failed: Callable[[str], None],
        server_names: ServerNameSlot | None = None,
        make_h2: Callable[[ClientProtocol], ClientProtocol] | None = None,
    ) -> None:
        self.client: ClientProtocol | None = client  # None once the connection is over
        # ALPN ``h2`` negotiated: the client protocol is replaced by what this makes of it
        self.make_h2 = make_h2
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        # the _ssl object itself, no ssl.SSLObject wrapper: the SNI callback gets it as is
        self.tls: Any = context._wrap_bio(  # type: ignore[attr-defined]
            self.incoming, self.outgoing, True, None
        )
        self.clock = clock
        self.deadline = 0.0  # of the handshake (the clock's time)
        self.limiter = limiter
        self.on_admitted = on_admitted
        self.on_failed = on_failed
        self.server_names = server_names
        self.shaking = False  # admitted, handshake neither completed nor failed yet
        self.tcp: asyncio.Transport | None = None
        self.held = ""  # the address whose place under the caps this connection holds
        self.refusing = False  # over the caps: holds a refusal place (answered 503)
        self.ready = False  # handshake done, client protocol attached
        self.closing = False
        self.reading_paused = False
        self.tickets_held = False  # TLS 1.3 tickets wait in ``outgoing`` for the first write
        self.corked = False  # writes only encrypt: ``close`` sends them with close_notify

    # -- protocol of the TCP transport -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(transport, peer_address(transport))

    def attach(self, transport: asyncio.BaseTransport, ip: str) -> None:
        """Take the TCP connection of client ``ip`` (the socket peer, or the client a PROXY
        header named): admit it under the caps or abort it, and wait for the handshake."""
        tcp: asyncio.Transport = transport  # type: ignore[assignment]
        self.tcp = tcp
        limiter = self.limiter
        client = self.client
        assert client is not None
        if limiter is not None:
            if limiter.acquire(ip):
                self.held = ip
            elif client.proxy.claim_refusal():
                # over the caps, and room to say so: the handshake, then 503 to its request
                self.refusing = True
                client.refused = True
            else:
                tcp.abort()  # before the handshake: nothing of TLS has run
                return
        client.forced_peer = ip
        client.preadmitted = True
        self.shaking = True
        self.on_admitted()
        self.clock.start(self)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.ready and not self._handshake():
            return
        if not self.reading_paused:
            self._deliver()
        if not self.tickets_held:
            self._send_pending()

    def eof_received(self) -> bool | None:
        client = self.client
        if not self.ready or client is None:
            return None  # gone during the handshake: close
        return bool(client.eof_received())  # a half-closed client may still get its answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.shaking:
            self.clock.done(self)
        if self.held:
            limiter = self.limiter
            assert limiter is not None
            limiter.release(self.held)
            self.held = ""
        if self.refusing:
            self.refusing = False
            client = self.client
            if client is not None:
                client.proxy.release_refusal()
        if self.shaking:
            self._failed("closed")
        client, self.client = self.client, None  # it holds this transport: no cycle left
        if self.ready and client is not None:
            self.ready = False
            client.connection_lost(exc)
        self.tcp = None

    def pause_writing(self) -> None:
        if self.ready and self.client is not None:
            self.client.pause_writing()

    def resume_writing(self) -> None:
        if self.ready and self.client is not None:
            self.client.resume_writing()

    # -- TLS --------------------------------------------------------------------------------
    def _handshake(self) -> bool:
        """Advance the handshake; True once it is done and the client is attached."""
        if self.server_names is not None:
            self.server_names.name = None  # only a name the callback leaves in this call
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._take_server_name()
            self._send_pending()
            return False
        except (ssl.SSLError, OSError, ValueError):
            # refused version, unknown name, garbage
            self._take_server_name()
            self.clock.done(self)
            self._failed("error")
            self._send_pending()  # the alert, if OpenSSL made one
            self._abort_tcp()
            return False
        self.clock.done(self)
        self._take_server_name()
        client = self.client
        if client is None:
            return False
        self.shaking = False
        self.ready = True
        # TLS 1.2 ends with the server's Finished, which the client waits for; TLS 1.3 ends
        # with the client's, and what OpenSSL has made since (tickets) can wait
        self.tickets_held = self.tls.version() == "TLSv1.3"
        if self.make_h2 is not None and self.tls.selected_alpn_protocol() == "h2":
            client = self.client = self.make_h2(client)
        client.connection_made(self)  # type: ignore[arg-type]
        return True

    def _take_server_name(self) -> None:
        """The name the SNI callback left during the last ``do_handshake`` call, if any,
        becomes the client protocol's ``sni``; the slot is left empty."""
        names = self.server_names
        if names is None or names.name is None:
            return
        if self.client is not None:
            self.client.sni = names.name
        names.name = None

    def _deliver(self) -> None:
        """Hand the client protocol what can be decrypted now."""
        tls = self.tls
        incoming = self.incoming
        client = self.client
        if client is None:
            return
        while self.ready and not self.reading_paused and not self.closing:
            if not incoming.pending and not tls.pending():
                return  # nothing buffered: spare the exception a read would raise
            try:
                chunk: bytes = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                return  # a record not complete yet
            except ssl.SSLZeroReturnError:
                self._peer_finished()
                return
            except (ssl.SSLError, OSError, ValueError):
                self._abort_tcp()
                return
            if not chunk:
                self._peer_finished()
                return
            client.data_received(chunk)

    def _peer_finished(self) -> None:
        """The peer's close_notify: the end of its input."""
        if self.client is not None and self.client.eof_received():
            return  # the client protocol answers what it has, then closes
        self.close()

    def _send_pending(self) -> None:
        tcp = self.tcp
        if self.outgoing.pending and tcp is not None and not tcp.is_closing():
            tcp.write(self.outgoing.read())

    def expire(self) -> None:
        """The handshake timeout (``HandshakeClock``)."""
        if not self.ready:
            self._failed("timeout")
            self._abort_tcp()

    def _failed(self, reason: str) -> None:
        if self.shaking:
            self.shaking = False
            self.on_failed(reason)

    def _abort_tcp(self) -> None:
        self.closing = True
        if self.tcp is not None:
            self.tcp.abort()

    # -- transport of the client protocol ----------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.tcp is None:
            return
        try:
            self.tls.write(data)
        except (ssl.SSLError, OSError, ValueError):
            self._abort_tcp()
            return
        self._written()

    def writelines(self, pieces: Any) -> None:
        if self.closing or self.tcp is None:
            return
        tls = self.tls
        try:
            for piece in pieces:
                if piece:
                    tls.write(piece)
        except (ssl.SSLError, OSError, ValueError):
            self._abort_tcp()
            return
        self._written()

    def _written(self) -> None:
        """After the client protocol wrote: send it (with the held tickets) unless corked."""
        if not self.corked:
            self.tickets_held = False
            self._send_pending()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        tcp = self.tcp
        if tcp is None:
            return
        if self.ready:
            try:  # noqa: SIM105 - once per connection: no context manager object for it
                self.tls.shutdown()  # close_notify; the peer's is not waited for
            except (ssl.SSLError, OSError, ValueError):
                pass
            if self.outgoing.pending and not tcp.is_closing():
                tcp.write(self.outgoing.read())
        tcp.close()

    def abort(self) -> None:
        self._abort_tcp()

    def is_closing(self) -> bool:
        return self.closing or self.tcp is None or self.tcp.is_closing()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close of its own: close sends close_notify

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            if self.tcp is not None:
                self.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.tcp is not None and not self.tcp.is_closing():
                self.tcp.resume_reading()
                # what was decrypted-to-be while paused: deliver it on the next iteration
                asyncio.get_running_loop().call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self.ready and not self.reading_paused:
            self._deliver()
            if not self.tickets_held:
                self._send_pending()

    def is_reading(self) -> bool:
        return not self.reading_paused

    def get_write_buffer_size(self) -> int:
        return self.tcp.get_write_buffer_size() if self.tcp is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.tcp is not None:
            self.tcp.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls
        if name == "sslcontext":
            return self.tls.context
        if name == "peercert":
            return None
        if name == "cipher":
            return self.tls.cipher()
        tcp = self.tcp
        return tcp.get_extra_info(name, default) if tcp is not None else default

    def set_protocol(self, protocol: Any) -> None:
        raise NotImplementedError("the edge's client protocol stays for the connection")

    def get_protocol(self) -> Any:
        return self.client


def tls_factory(
    *,
    make_client: Callable[[], ClientProtocol],
    context: ssl.SSLContext,
    handshake_timeout: float | None,
    limiter: ConnectionLimiter | None,
    on_admitted: Callable[[], None],
    on_failed: Callable[[str], None],
    server_names: ServerNameSlot | None = None,
    make_h2: Callable[[ClientProtocol], ClientProtocol] | None = None,
) -> Callable[[], TlsTransport]:
    """A protocol factory for ``loop.create_server`` on a plain socket serving HTTPS;
    ``server_names``: the slot the context's SNI callback fills (``ClientInfo.sni``);
    ``make_h2``: the HTTP/2 protocol for a connection that negotiated ALPN ``h2``."""
    clock = HandshakeClock(handshake_timeout if handshake_timeout is not None else 60.0)

    def factory() -> TlsTransport:
        return TlsTransport(
            make_client(),
            context,
            clock=clock,
            limiter=limiter,
            on_admitted=on_admitted,
            on_failed=on_failed,
            server_names=server_names,
            make_h2=make_h2,
        )

    return factory
