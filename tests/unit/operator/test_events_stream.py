"""``StreamBody``, the response of followed events and logs, against a fake ASGI server:
a reader that stops reading is cut off after the send timeout, a client that goes away or an
operator that drains ends the stream, and the source is closed every time (its upstream
streams with it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from structlog.testing import capture_logs

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.operator.api.streaming import StreamBody


class Source:
    """Yields ``chunk`` ``count`` times (then waits for ever); remembers being closed."""

    def __init__(self, *, count: int = 10**9, fail_after: int | None = None) -> None:
        self.count = count
        self.fail_after = fail_after
        self.pulled = 0
        self.closed = False

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            while self.pulled < self.count:
                if self.fail_after is not None and self.pulled >= self.fail_after:
                    raise ServiceUnavailable("database gone")
                self.pulled += 1
                yield b"x" * 1024
            await asyncio.Event().wait()
        finally:
            self.closed = True


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _run(
    body: StreamBody,
    *,
    send_blocks_after: int | None = None,
    disconnect: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if send_blocks_after is not None and len(sent) >= send_blocks_after:
            await asyncio.Event().wait()  # the client's socket is full: never drains
        sent.append(message)

    async def receive() -> dict[str, Any]:
        if disconnect is None:
            return await _never()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async with asyncio.timeout(5):
        await body(scope={"type": "http"}, receive=receive, send=send)
    return sent


def _body(source: Source, stopping: asyncio.Event, **kwargs: Any) -> StreamBody:
    return StreamBody(source.stream(), media_type="text/event-stream", stopping=stopping, **kwargs)


async def test_a_reader_that_stops_reading_is_cut_off_and_the_source_closed() -> None:
    source = Source()
    with capture_logs() as logs:
        sent = await _run(_body(source, asyncio.Event(), send_timeout=0.1), send_blocks_after=3)
    assert source.closed
    assert source.pulled <= 4  # one chunk in flight, nothing piled up for the slow client
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 2
    assert {"what": "stream", "ended": "client_slow"}.items() <= logs[-1].items()


async def test_a_client_that_goes_away_ends_the_stream_while_the_source_waits() -> None:
    source = Source(count=2)
    gone = asyncio.Event()
    body = _body(source, asyncio.Event())
    task = asyncio.create_task(_run(body, disconnect=gone))
    while source.pulled < 2:
        await asyncio.sleep(0)
    with capture_logs() as logs:
        gone.set()
        sent = await task
    assert source.closed
    assert len(sent) == 3  # start and two chunks, no end: the client is gone
    assert logs[-1]["ended"] == "client_gone"


async def test_draining_ends_the_stream_cleanly() -> None:
    source = Source(count=1)
    stopping = asyncio.Event()
    task = asyncio.create_task(_run(_body(source, stopping)))
    while source.pulled < 1:
        await asyncio.sleep(0)
    stopping.set()
    sent = await task
    assert source.closed
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_source_that_fails_ends_the_response() -> None:
    source = Source(fail_after=1)
    with capture_logs() as logs:
        sent = await _run(_body(source, asyncio.Event()))
    assert sent[-1]["more_body"] is False
    assert any(e["event"] == "stream.failed" and e["error"] == "database gone" for e in logs)


async def test_a_finished_source_ends_the_response_without_a_length() -> None:
    async def three() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    body = StreamBody(three(), media_type="application/x-ndjson", stopping=asyncio.Event())
    sent = await _run(body)
    assert b"".join(m.get("body", b"") for m in sent) == b"abc"
    headers = dict(sent[0]["headers"])
    assert b"content-length" not in headers
    assert headers[b"cache-control"] == b"no-cache"
