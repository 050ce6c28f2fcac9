"""Long-lived responses (followed events and logs): Server-Sent Events and NDJSON framing,
and the ASGI response that sends a stream without ever holding more than one chunk for a
client.

``StreamBody`` pulls the next chunk from its source only when the previous one was handed to
the server, so a slow reader slows its source (bounded memory: the source's own buffers and
the socket's) and one that stops reading for ``send_timeout`` seconds is cut off. The source
is closed (its ``finally`` blocks run, closing upstream streams) as soon as the client goes
away, the operator stops, or the source ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from zeitwork.core.errors import ZeitworkError

log = structlog.get_logger("zeitwork.operator.streams")

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"
KEEPALIVE_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 30.0


def sse_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE message: ``data`` split into ``data:`` lines (a line break in the data cannot
    end the message early), with an optional ``id:`` and ``event:``."""
    parts: list[str] = []
    if event_id is not None:
        if any(ch in event_id for ch in "\r\n\0"):
            raise ValueError("an SSE id cannot hold a line break or NUL")
        parts.append(f"id: {event_id}\n")
    if event is not None:
        if any(ch in event for ch in "\r\n"):
            raise ValueError("an SSE event name cannot hold a line break")
        parts.append(f"event: {event}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode()


def sse_comment(text: str = "keepalive") -> bytes:
    """A comment line: clients ignore it; it keeps proxies from timing the stream out."""
    return (": " + text.replace("\r", " ").replace("\n", " ") + "\n\n").encode()


def sse_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


def ndjson_line(data: str) -> bytes:
    """One NDJSON record (``data`` is compact JSON, which holds no raw line break)."""
    return (data + "\n").encode()


_STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a reverse proxy in front must not buffer the stream
}


class StreamBody(Response):
    """A streamed response from an async iterator of byte chunks (see the module doc)."""

    def __init__(
        self,
        source: AsyncIterator[bytes],
        *,
        media_type: str,
        stopping: asyncio.Event,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
        what: str = "stream",
    ) -> None:
        super().__init__(
            content=None, media_type=media_type, headers={**_STREAM_HEADERS, **(headers or {})}
        )
        # a stream has no length: chunked transfer (Response set content-length: 0)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._source = source
        self._stopping = stopping
        self._send_timeout = send_timeout
        self._what = what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch_client() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch_client(), name="stream-client-watch")
        stop = asyncio.create_task(self._stopping.wait(), name="stream-stop-watch")
        ended = "complete"
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            source = aiter(self._source)
            while True:
                pull = asyncio.ensure_future(anext(source))
                gone_wait = asyncio.ensure_future(gone.wait())
                done, _ = await asyncio.wait(
                    {pull, gone_wait, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                gone_wait.cancel()
                if pull not in done:
                    pull.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await pull
                    if gone.is_set():
                        ended = "client_gone"
                    else:  # the operator drains: end the response cleanly (clients resume)
                        ended = "stopping"
                        await self._send(send, b"", more=False)
                    break
                try:
                    chunk = pull.result()
                except StopAsyncIteration:
                    await self._send(send, b"", more=False)
                    break
                except ZeitworkError as exc:  # e.g. the database went away: end, clients resume
                    ended = "failed"
                    log.warning("stream.failed", what=self._what, error=exc.detail)
                    await self._send(send, b"", more=False)
                    break
                if not await self._send(send, chunk, more=True):
                    ended = "client_slow"
                    break
        finally:
            watcher.cancel()
            stop.cancel()
            closing = getattr(self._source, "aclose", None)
            if closing is not None:
                await closing()
            log.info("stream.closed", what=self._what, ended=ended)

    async def _send(self, send: Send, chunk: bytes, *, more: bool) -> bool:
        message: dict[str, Any] = {"type": "http.response.body", "body": chunk, "more_body": more}
        try:
            await asyncio.wait_for(send(message), self._send_timeout)
        except TimeoutError:
            return False
        return True
