"""Server-Sent Events: the parser's field rules, the back-off, and the follow loop resuming a
dropped stream with Last-Event-ID without duplicates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from zeitwork.clients.sse import Backoff, SseEvent, SseParser, follow, is_new
from zeitwork.core.errors import NotFound, ServiceUnavailable


def _parse(lines: list[str]) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    return events, parser


def test_data_lines_join_and_a_blank_line_dispatches() -> None:
    events, _ = _parse(["id: 7", "data: a", "data:b", "", "data: c"])
    assert events == [SseEvent(data="a\nb", id="7")]


def test_comments_and_events_without_data_dispatch_nothing() -> None:
    events, parser = _parse([": keep-alive", "", "id: 3", "", "event: ping", ""])
    assert events == []
    assert parser.last_event_id == "3"


def test_event_name_retry_and_unknown_fields() -> None:
    events, parser = _parse(["event: notice", "retry: 1500", "bogus: x", "data: hi", ""])
    assert events == [SseEvent(data="hi", event="notice")]
    assert parser.retry_ms == 1500
    _, bad = _parse(["retry: soon"])
    assert bad.retry_ms is None


def test_only_one_leading_space_is_stripped_and_a_bare_field_is_empty() -> None:
    events, _ = _parse(["data:  two", "", "data", ""])
    assert [e.data for e in events] == [" two", ""]


def test_an_id_with_nul_is_ignored_and_the_last_id_carries_over() -> None:
    events, parser = _parse(["id: 1", "data: a", "", "id: x\0y", "data: b", ""])
    assert [e.id for e in events] == ["1", None]
    assert parser.last_event_id == "1"


@pytest.mark.parametrize(
    ("event_id", "last", "expected"),
    [
        ("5", "4", True),
        ("4", "4", False),
        ("3", "10", False),
        ("10", "9", True),
        (None, "4", True),
        ("4", None, True),
        ("b", "a", True),
        ("a", "a", False),
    ],
)
def test_is_new(event_id: str | None, last: str | None, expected: bool) -> None:
    assert is_new(event_id, last) is expected


def test_backoff_doubles_to_its_maximum_resets_and_honours_the_server() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay(server_retry_ms=2500) == 2.5
    assert backoff.next_delay(server_retry_ms=60_000) == 3.0


class _Server:
    """Scripted stream attempts: each is a list of lines, or an exception to raise."""

    def __init__(self, attempts: list[list[str] | Exception]) -> None:
        self.attempts = attempts
        self.resumed_after: list[str | None] = []

    @asynccontextmanager
    async def open(self, last_event_id: str | None) -> AsyncIterator[AsyncIterator[str]]:
        self.resumed_after.append(last_event_id)
        attempt = self.attempts.pop(0)
        if isinstance(attempt, Exception):
            raise attempt

        async def lines() -> AsyncIterator[str]:
            for line in attempt:
                if line == "!drop":
                    raise ServiceUnavailable("operator is unreachable: connection reset")
                yield line

        yield lines()


def _frames(*ids: int) -> list[str]:
    return [x for i in ids for x in (f"id: {i}", f'data: {{"n": {i}}}', "")]


async def _take(server: _Server, count: int, **kwargs: object) -> list[str]:
    seen: list[str] = []
    async for event in follow(server.open, backoff=Backoff(initial=0.001, maximum=0.002), **kwargs):  # type: ignore[arg-type]
        seen.append(event.data)
        if len(seen) == count:
            break
    return seen


async def test_a_dropped_stream_resumes_after_the_last_id_without_duplicates() -> None:
    server = _Server(
        [
            [*_frames(1, 2), "data: a notice without id", "", "!drop"],
            ServiceUnavailable("operator is unreachable: connection refused"),
            _frames(2, 3),  # a server that replays the last event it sent
            _frames(4),
        ]
    )
    retries: list[str] = []
    seen = await _take(server, 5, on_retry=lambda cause, delay: retries.append(cause))
    assert seen == ['{"n": 1}', '{"n": 2}', "a notice without id", '{"n": 3}', '{"n": 4}']
    assert server.resumed_after == [None, "2", "2", "3"]
    assert retries == [
        "operator is unreachable: connection reset",
        "operator is unreachable: connection refused",
        "the stream ended",
    ]


async def test_following_starts_after_the_given_id() -> None:
    server = _Server([_frames(5, 6, 7)])
    seen = await _take(server, 1, last_event_id="6")
    assert seen == ['{"n": 7}']
    assert server.resumed_after == ["6"]


async def test_a_refusal_is_raised_at_once() -> None:
    server = _Server([NotFound("GET /api/v1/events: no project x")])
    with pytest.raises(NotFound):
        await _take(server, 1)


async def test_it_gives_up_after_max_failures_in_a_row() -> None:
    down = ServiceUnavailable("operator is unreachable: connection refused")
    server = _Server([down, down, down])
    with pytest.raises(ServiceUnavailable):
        await _take(server, 1, max_failures=3)
    assert len(server.resumed_after) == 3
