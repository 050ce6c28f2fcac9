"""The exchange: one request and its response through the proxy, and its course (routing,
the backend connection, retry, completion, release).

``Exchange`` (``state``) holds the state; the functions here move it on for the client
connection that owns it (a ``connection.Connection``, passed as ``conn``): ``start`` routes
it, ``assign`` / ``connect`` / ``attach`` put it on a backend connection, ``complete`` /
``lost`` / ``garbage`` take the backend's outcome, ``fail_upstream`` retries or answers the
failure, ``finish`` hands the connection to the next request. Methods a subclass of the client
protocol may override (``_finish``, ``_send_local``, ``_send_problem``, ``_send_error``,
``_write``, ``close``, ``abort``, ``linger_close``, ``pause_reading_for``,
``resume_reading_for``) are called through ``conn``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import structlog

from zeitwork.proxy import h2_upstream
from zeitwork.proxy.config import (
    DEADLINE_FIRST_BYTE,
    DEADLINE_HEAD,
    DEADLINE_IDLE,
    IDEMPOTENT,
    PAUSE_BUFFER,
    PAUSE_QUEUE,
    PAUSE_UPSTREAM,
    PAUSE_WAIT,
)
from zeitwork.proxy.connection import Connection
from zeitwork.proxy.state import Exchange as Exchange  # noqa: PLC0414 - its first home
from zeitwork.proxy.state import stall_timeout
from zeitwork.proxy.types import PendingResponse
from zeitwork.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend

_log = structlog.get_logger("zeitwork.proxy")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # the answer to Expect: 100-continue


def abandon(conn: Connection, ex: Exchange) -> None:
    """The client went away: drop the upstream side of ``ex`` without reusing it."""
    ex.finished = True
    if ex.connect_task is not None:
        ex.connect_task.cancel()
    up = ex.upstream
    if up is not None:
        ex.upstream = None
        up.abort()
    release_backend(conn, ex, status=499)


def stalled(conn: Connection, ex: Exchange | None, kind: int) -> None:
    """Nothing moved in time: answer 504 (408) before the response started, cut after."""
    if ex is None:
        conn.abort()
        return
    waiting_for_client = not ex.body_done and not conn.paused & PAUSE_UPSTREAM
    if kind == DEADLINE_FIRST_BYTE:
        stage = "first_byte"
    elif ex.response_started:
        stage = "response"
    else:
        stage = "request_body" if waiting_for_client else "response_head"
    _log.warning(
        "proxy.exchange_stalled",
        stage=stage,
        request_id=ex.head.request_id,
        host=ex.head.host,
        peer=conn.peer_ip,
        timeout=stall_timeout(conn.proxy.config, ex, kind),
    )
    if ex.response_started:
        ex.finished = True
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        release_backend(conn, ex, status=504)
        conn.abort()
        return
    ex.close_after = True
    if waiting_for_client:
        ex.finished = True
        if ex.connect_task is not None:
            ex.connect_task.cancel()
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        release_backend(conn, ex, status=408)
        conn.ex = None
        conn._send_error(408, "the request body stalled", close=True)
        return
    fail_upstream(conn, ex, 504, "the backend did not answer in time", retry=False)


def refuse(conn: Connection, status: int, detail: str) -> None:
    """The request being read broke a rule (``RequestError``): answer ``status`` now, or after
    the exchange in front of it."""
    broken = conn.parsing
    conn.parsing = None
    ex = conn.ex
    if ex is None or ex.finished:
        conn._send_error(status, detail, close=True)
        return
    if broken is ex or not ex.body_done:
        # the request being forwarded is itself broken (bad chunk, body over the limit)
        ex.close_after = True
        if ex.response_started:
            ex.finished = True
            up = ex.upstream
            ex.upstream = None
            if up is not None:
                up.abort()
            release_backend(conn, ex, status=status)
            conn.abort()
            return
        ex.finished = True
        if ex.connect_task is not None:
            ex.connect_task.cancel()
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        release_backend(conn, ex, status=status)
        conn.ex = None
        conn._send_error(status, detail, close=True)
        return
    # a later pipelined request is malformed: answer it after the current one, then close
    conn.pending_error = (status, detail)
    conn.pause_reading_for(PAUSE_QUEUE)


def start(conn: Connection, ex: Exchange) -> None:
    """Route ``ex``: the policy may answer it; else a pool and a backend are picked."""
    proxy = conn.proxy
    head = ex.head
    if proxy.has_policy:
        local = proxy.policy.on_request(head, ex.client)
        if local is not None:
            if isinstance(local, PendingResponse):
                ex.connect_task = asyncio.get_running_loop().create_task(
                    _answer_pending(conn, ex, local)
                )
            else:
                conn._send_local(ex, local)
            return
    pool = proxy.router.resolve(head.host, head.path)
    if pool is None:
        conn._send_problem(ex, 503, "no backend serves this host", retry_after=True)
        return
    ex.pool = pool
    if ex.upgrade:
        if not pool.take_tunnel():
            _log.warning(
                "proxy.tunnel_refused",
                host=head.host,
                peer=conn.peer_ip,
                max_tunnels=pool.max_tunnels,
            )
            conn._send_problem(ex, 503, "too many open tunnels on this route", retry_after=True)
            return
        ex.holds_tunnel = True
    if pool.response_idle_timeout and conn.ex is ex:
        conn._arm_exchange(ex, proxy.now())  # the route's own stall limit
    backend = pool.pick(ex.client.client_ip)
    if backend is None:
        conn._send_problem(ex, 503, "no healthy backend", retry_after=True)
        return
    assign(conn, ex, backend)


async def _answer_pending(conn: Connection, ex: Exchange, pending: PendingResponse) -> None:
    """Send a policy's ``PendingResponse`` once it is ready. Held as ``ex.connect_task``, so
    the exchange's end (the client gone, a deadline) cancels it as it cancels a connect."""
    try:
        local = await pending.answer()
    except Exception as exc:  # a policy's bug: the request gets a 500, the proxy goes on
        _log.error("proxy.local_answer_failed", error=f"{type(exc).__name__}: {exc}")
        local = None
    ex.connect_task = None
    if ex.finished or conn.transport is None:
        return
    if local is None:
        conn._send_problem(ex, 500, "the local answer failed")
    else:
        conn._send_local(ex, local)


def assign(conn: Connection, ex: Exchange, backend: Backend) -> None:
    ex.backend = backend
    backend.in_flight += 1
    backend.requests += 1
    if backend.protocol == h2_upstream.H2C:  # a stream on a shared h2c connection
        h2_upstream.assign(conn, ex, backend)
        return
    up = backend.take_idle()
    if up is not None:
        attach(conn, ex, cast(UpstreamProtocol, up))  # only these are put in the idle list
        return
    ex.connect_task = asyncio.get_running_loop().create_task(connect(conn, ex, backend))


async def connect(conn: Connection, ex: Exchange, backend: Backend) -> None:
    """Open a connection to ``backend`` for ``ex`` (within ``connect_timeout``)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(conn.proxy.config.connect_timeout):
            up = UpstreamProtocol(backend, conn.proxy.flusher)
            await loop.create_connection(
                lambda: cast(asyncio.Protocol, up), backend.host, backend.port
            )
    except (OSError, TimeoutError) as exc:
        ex.connect_task = None
        if ex.finished:
            return
        backend.record_failure()
        timeout = isinstance(exc, TimeoutError)
        fail_upstream(
            conn,
            ex,
            504 if timeout else 502,
            "connecting to the backend timed out"
            if timeout
            else "the backend refused the connection",
            retry=True,
        )
        return
    ex.connect_task = None
    if ex.finished or conn.closing:
        up.close()
        return
    attach(conn, ex, up)


def attach(conn: Connection, ex: Exchange, up: UpstreamProtocol) -> None:
    """Send the request (head and what is buffered of its body) on ``up``."""
    ex.upstream = up
    up.ex = ex
    up.client = conn
    up.reusable = False
    up.got_bytes = False
    # perf_counter, not loop.time(): uvloop's loop clock ticks in whole milliseconds, so
    # sub-millisecond upstream latencies measured with it came out as 0 and were lost
    ex.upstream_started = time.perf_counter()
    body = ex.body_buf
    if body:
        if ex.chunked:
            framed = [ex.head_bytes]
            for chunk in body:
                framed += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            if ex.body_done:
                framed.append(b"0\r\n\r\n")
            up.writelines(framed)
        else:
            up.writelines([ex.head_bytes, *body])
        if ex.body_done:
            ex.streamed = False  # kept for a retry on a stale connection
        else:
            ex.body_buf = []
            ex.buffered = 0
            ex.streamed = True
    elif ex.chunked and ex.body_done:
        up.writelines([ex.head_bytes, b"0\r\n\r\n"])
    else:
        up.write(ex.head_bytes)
    ex.sent_head = True
    if conn.paused & PAUSE_BUFFER:
        conn.resume_reading_for(PAUSE_BUFFER)
    if ex.expect and ex.received == 0 and not ex.body_done:
        conn._write(CONTINUE)
    if ex.upgrade and ex.tunnel_buf:
        up.write(ex.tunnel_buf)
        ex.tunnel_buf = b""


def complete(conn: Connection, ex: Exchange, up: UpstreamProtocol, keep_alive: bool) -> None:
    """The backend's response ended (``keep_alive``: its connection may be reused)."""
    if ex is not conn.ex or ex.finished:
        up.abort()
        return
    if ex.resp_chunked:
        conn._write(up.last_chunk())  # with an h2c backend's trailers
    ex.upstream = None
    if keep_alive and ex.body_done and not ex.upgrade:
        up.release()
    else:
        up.ex = None
        up.client = None
        up.close()
    if not ex.body_done:
        ex.close_after = True  # the rest of the request body cannot be skipped safely
    backend = ex.backend
    if backend is not None:
        if ex.status >= 500:
            backend.record_failure()
        else:
            backend.record_success()
    conn._finish(ex)


def garbage(conn: Connection, ex: Exchange) -> None:
    """The backend sent something that is not HTTP."""
    ex.upstream = None
    if ex.backend is not None:
        ex.backend.record_failure()
    if ex.response_started:
        ex.finished = True
        release_backend(conn, ex, status=502)
        conn.abort()
        return
    ex.close_after = True
    fail_upstream(conn, ex, 502, "the backend sent an invalid response", retry=False)


def lost(conn: Connection, ex: Exchange, up: UpstreamProtocol) -> None:
    """The backend connection closed under ``ex``."""
    ex.upstream = None
    if ex.finished or ex is not conn.ex:
        return
    if ex.response_started:
        if ex.upstream_until_close:
            if ex.resp_chunked:
                conn._write(b"0\r\n\r\n")
            conn._finish(ex)  # the close-delimited body ended
            return
        ex.finished = True
        release_backend(conn, ex, status=502)
        conn.abort()  # truncated response: the client must see the failure
        return
    stale = up.served > 0 and not up.got_bytes
    if not stale and ex.backend is not None:
        ex.backend.record_failure()
    fail_upstream(
        conn, ex, 502, "the backend closed the connection", retry=stale, same_backend=stale
    )


def fail_upstream(
    conn: Connection,
    ex: Exchange,
    status: int,
    detail: str,
    *,
    retry: bool,
    same_backend: bool = False,
) -> None:
    """The backend failed ``ex``: retried once on another backend when that is safe, else
    answered ``status``."""
    failed = ex.backend
    up = ex.upstream
    if up is not None:
        ex.upstream = None
        up.abort()
    if ex.connect_task is not None:
        ex.connect_task.cancel()
        ex.connect_task = None
    if failed is not None:
        failed.in_flight -= 1
        ex.backend = None
    can_retry = (
        retry
        and ex.retries == 0
        # any method when nothing reached the backend (a refused connect), else only
        # idempotent ones
        and (ex.head.method in IDEMPOTENT or not ex.sent_head)
        and ex.body_done
        and not ex.streamed
        and not ex.response_started
        and ex.pool is not None
        and not conn.closing
    )
    if can_retry and ex.pool is not None:
        ex.retries += 1
        other = failed if same_backend else ex.pool.pick(ex.client.client_ip, exclude=failed)
        if other is not None and (same_backend or other is not failed):
            ex.sent_head = False
            assign(conn, ex, other)
            return
    ex.failed = failed
    if not ex.body_done:
        ex.close_after = True
    conn._send_problem(ex, status, detail, backend=failed)


def release_backend(conn: Connection, ex: Exchange, *, status: int) -> None:
    """``ex`` no longer holds its backend: counted, and reported to the observer."""
    backend = ex.backend
    ex.backend = None
    pool = ex.pool
    if ex.holds_tunnel:  # an upgrade that did not become a tunnel: its place is free again
        ex.holds_tunnel = False
        if pool is not None:
            pool.give_tunnel()
    if backend is not None:
        backend.in_flight -= 1
        conn.proxy.observer.request_done(
            pool.name if pool is not None else "-",
            backend.address,
            status,
            time.perf_counter() - ex.upstream_started,
            ex.received,
            ex.sent,
        )
    else:
        conn.proxy.observer.request_done(
            pool.name if pool is not None else "-",
            ex.failed.address if ex.failed is not None else "-",
            status,
            0.0,
            ex.received,
            ex.sent,
        )


def finish(conn: Connection, ex: Exchange) -> None:
    """``ex`` ended: the next pipelined request starts, or the connection waits or closes."""
    ex.finished = True
    release_backend(conn, ex, status=ex.status)
    conn.ex = None
    ex.body_buf = []
    if ex.close_after or conn.closing:
        if ex.body_done:
            conn.close()
        else:  # the client may still be sending the body we did not read
            conn.linger_close()
        return
    if conn.pending_error is not None:
        status, detail = conn.pending_error
        conn.pending_error = None
        conn._send_error(status, detail, close=True)
        return
    proxy = conn.proxy
    if proxy.draining:
        conn.close()
        return
    if conn.queue:
        nxt = conn.queue.popleft()
        conn.ex = nxt
        conn._arm_exchange(nxt, proxy.now())
        if not conn.queue:
            conn.resume_reading_for(PAUSE_QUEUE)
        start(conn, nxt)
        return
    if conn.parsing is None:
        conn.deadline = proxy.now() + proxy.config.idle_timeout
        conn.deadline_kind = DEADLINE_IDLE
    else:
        conn.deadline = proxy.now() + proxy.config.header_timeout
        conn.deadline_kind = DEADLINE_HEAD
    if conn.paused & PAUSE_WAIT:
        conn.resume_reading_for(PAUSE_WAIT)
