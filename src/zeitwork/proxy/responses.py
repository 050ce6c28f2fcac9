"""The proxy core's own answers: a policy's local response, the core's error problems
(502, 503, 504, ...) inside an exchange, and errors outside any exchange (malformed input,
a head timeout), then the lingering close that lets the client read them.

Functions of the client connection (``conn``, a ``connection.Connection``);
``ClientProtocol`` keeps the methods of the same names (``_send_local``, ``_send_problem``,
``_send_error``, ``linger_close``) as the seam a subclass overrides (the HTTP/2 stream, the
edge's HTML pages through ``render_error``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zeitwork.proxy.config import DEADLINE_LINGER
from zeitwork.proxy.connection import Connection
from zeitwork.proxy.headers import serialize_response
from zeitwork.proxy.state import Exchange
from zeitwork.proxy.types import Headers, LocalResponse

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend


def send_local(conn: Connection, ex: Exchange, local: LocalResponse) -> None:
    """Answer ``ex`` from the proxy itself (a policy's answer, an error problem)."""
    headers = list(local.headers)
    if conn.proxy.config.response_request_id:
        headers.append((b"x-request-id", ex.request_id))
    conn.proxy.policy.on_response(ex.head, ex.client, local.status, headers)
    close = local.close or not ex.head.keep_alive or not ex.body_done or conn.proxy.draining
    ex.status = local.status
    ex.close_after = close
    conn._write(
        serialize_response(local.status, headers, local.body, close=close, head_only=ex.head_only)
    )
    conn._finish(ex)


def send_problem(
    conn: Connection,
    ex: Exchange,
    status: int,
    detail: str,
    *,
    retry_after: bool = False,
    backend: Backend | None = None,
) -> None:
    """Answer ``ex`` with one of the core's errors (rendered by ``conn.render_error``)."""
    content_type, body = conn.render_error(status, detail, ex.head.headers)
    headers: Headers = [(b"content-type", content_type)]
    if retry_after or status == 503:
        headers.append((b"retry-after", str(conn.proxy.config.retry_after).encode()))
    ex.failed = backend or ex.failed
    conn._send_local(ex, LocalResponse(status=status, headers=headers, body=body))


def send_error(conn: Connection, status: int, detail: str, *, close: bool) -> None:
    """An answer outside any exchange (malformed input, head timeout)."""
    conn.closing = True
    if conn.transport is None:
        return
    content_type, body = conn._error_body(status, detail)
    headers: Headers = [(b"content-type", content_type)]
    if status in (429, 503):
        headers.append((b"retry-after", b"%d" % conn.proxy.config.retry_after))
    conn._write(serialize_response(status, headers, body, close=close))
    conn.proxy.observer.request_done("-", "-", status, 0.0, 0, 0)
    if close:
        conn.linger_close()


def linger_close(conn: Connection) -> None:
    """Send what is queued, shut our side, discard input for a moment, then close.

    Closing at once while the client is still sending makes the kernel answer with a
    reset that can destroy the error response before the client reads it."""
    conn.closing = True
    transport = conn.transport
    if transport is None:
        return
    conn.flush()
    if transport.can_write_eof():
        transport.write_eof()
        conn.deadline = conn.proxy.now() + 2.0
        conn.deadline_kind = DEADLINE_LINGER
    else:
        transport.close()
