"""Server-Sent Events: an incremental parser of the ``text/event-stream`` format and a follow
loop that reconnects a dropped stream with ``Last-Event-ID``.

The parser is pure (lines in, events out) and follows the WHATWG rules the operator's streams
need: ``data`` lines join with ``\\n``, an empty line dispatches, ``:`` lines are comments
(keep-alives), ``id`` sets the last event id (an id holding NUL is ignored), ``retry`` sets
the reconnection delay in milliseconds. The follow loop resumes after the last id it saw and
drops any event whose numeric id is not above it, so a server that replays on resume never
yields a duplicate; it backs off between attempts (``Backoff``) and gives up only on a refusal
that retrying cannot fix (4xx: unknown project, bad token).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from zeitwork.core.errors import ServiceUnavailable

StreamOpener = Callable[[str | None], AbstractAsyncContextManager[AsyncIterator[str]]]
"""Opens the stream resuming after an event id (None: from the start); yields its lines."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One message; ``id`` is the id it carried itself (None: it had no ``id`` line, and
    the stream's last event id stays what it was)."""

    data: str
    id: str | None = None
    event: str = "message"


@dataclass(slots=True)
class SseParser:
    """Feed it the stream's lines (line endings stripped); it returns each complete event."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _own_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = self._own_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event, own_id = self._data, self._event, self._own_id
        self._data, self._event, self._own_id = [], "", None
        if not data:
            return None
        return SseEvent(data="\n".join(data), id=own_id, event=event or "message")


@dataclass(slots=True)
class Backoff:
    """Delays between reconnections: ``initial`` doubling up to ``maximum``; a stream that
    delivered something starts again from ``initial``."""

    initial: float = 0.25
    maximum: float = 5.0
    _next: float = 0.0

    def __post_init__(self) -> None:
        self._next = self.initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self, server_retry_ms: int | None = None) -> float:
        delay = self._next
        if server_retry_ms is not None:
            delay = max(delay, server_retry_ms / 1000)
        self._next = min(self._next * 2, self.maximum)
        return min(delay, self.maximum)


def is_new(event_id: str | None, last_id: str | None) -> bool:
    """Whether an event with ``event_id`` comes after ``last_id``: numeric ids must grow;
    other ids are taken as the server's resume already skipped what was seen."""
    if event_id is None or last_id is None:
        return True
    if event_id.isdigit() and last_id.isdigit():
        return int(event_id) > int(last_id)
    return event_id != last_id


async def follow(
    open_stream: StreamOpener,
    *,
    last_event_id: str | None = None,
    backoff: Backoff | None = None,
    on_retry: Callable[[str, float], None] | None = None,
    max_failures: int | None = None,
) -> AsyncIterator[SseEvent]:
    """Every event of a followed stream, across reconnections, each once.

    A stream that ends or breaks (the server restarted, the connection dropped, a 5xx) is
    reopened after a back-off delay, resuming after the last id seen; ``on_retry(cause,
    delay)`` hears of each attempt. After ``max_failures`` attempts in a row that delivered
    nothing, the last ``ServiceUnavailable`` is raised (None: retry for ever). Any other
    error (a 4xx refusal) is raised at once.
    """
    wait = backoff or Backoff()
    last = last_event_id
    failures = 0
    retry_ms: int | None = None
    while True:
        parser = SseParser(last_event_id=last)
        delivered = False
        try:
            async with open_stream(last) as lines:
                async for line in lines:
                    event = parser.feed(line)
                    if event is None:
                        continue
                    if not is_new(event.id, last):
                        continue
                    last = event.id if event.id is not None else last
                    delivered = True
                    failures = 0
                    wait.reset()
                    yield event
            cause = "the stream ended"
        except ServiceUnavailable as exc:
            cause = exc.detail
            if not delivered:
                failures += 1
                if max_failures is not None and failures >= max_failures:
                    raise
        retry_ms = parser.retry_ms if parser.retry_ms is not None else retry_ms
        delay = wait.next_delay(retry_ms)
        if on_retry is not None:
            on_retry(cause, delay)
        await asyncio.sleep(delay)
