"""The pure parts of the events feed and of stream framing: versions, gaps in ``seq``, the
filter test, SSE and NDJSON encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.operator.api.streaming import ndjson_line, sse_comment, sse_event, sse_retry
from zeitwork.operator.db.events import Event, EventFilter
from zeitwork.operator.services.events import _matches, contiguous_prefix, parse_version


def _event(seq: int, *, kind: str = "release.created", project: uuid.UUID | None = None) -> Event:
    return Event(
        seq=seq,
        id=uuid.uuid4(),
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
        project_id=project,
        project_environment_id=None,
        release_id=None,
        rollout_id=None,
        instance_id=None,
        node_id=None,
        kind=kind,
        level="info",
        message="m",
        data={},
    )


@pytest.mark.parametrize(("text", "version"), [("v3", 3), ("3", 3), (" V12 ", 12), ("v1", 1)])
def test_versions(text: str, version: int) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["", "v", "v0", "0", "latest", "v-1", "v1.2", "v99999999999"])
def test_bad_versions(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_version(text)


def test_contiguous_prefix_stops_at_the_first_gap() -> None:
    rows = [_event(s) for s in (5, 6, 8, 9)]
    assert [e.seq for e in contiguous_prefix(rows, 4)] == [5, 6]
    assert contiguous_prefix(rows, 3) == []  # 4 may still commit
    assert contiguous_prefix([], 3) == []
    assert [e.seq for e in contiguous_prefix(rows[2:], 7)] == [8, 9]


def test_matches_every_filter_field_and_kind_prefixes() -> None:
    app = uuid.uuid4()
    event = _event(1, kind="instance.started", project=app)
    assert _matches(event, EventFilter())
    assert _matches(event, EventFilter(project_id=app, kind_prefix="instance."))
    assert _matches(event, EventFilter(kind_prefix="instance.started"))
    assert not _matches(event, EventFilter(project_id=uuid.uuid4()))
    assert not _matches(event, EventFilter(kind_prefix="release."))
    assert not _matches(event, EventFilter(node_id=uuid.uuid4()))


def test_sse_event_framing() -> None:
    assert sse_event('{"a": 1}', event_id="42") == b'id: 42\ndata: {"a": 1}\n\n'
    assert sse_event("x") == b"data: x\n\n"
    assert sse_event("x", event="notice") == b"event: notice\ndata: x\n\n"


def test_sse_line_breaks_in_data_cannot_end_a_message() -> None:
    assert sse_event("one\ntwo\r\nthree\rfour") == (
        b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    )
    assert sse_event("") == b"data: \n\n"


@pytest.mark.parametrize("bad", ["1\n2", "1\r", "a\0"])
def test_sse_ids_cannot_hold_line_breaks(bad: str) -> None:
    with pytest.raises(ValueError, match="SSE id"):
        sse_event("x", event_id=bad)


def test_comments_retry_and_ndjson() -> None:
    assert sse_comment() == b": keepalive\n\n"
    assert sse_comment("a\nb") == b": a b\n\n"
    assert sse_retry(1000) == b"retry: 1000\n\n"
    assert ndjson_line('{"a":1}') == b'{"a":1}\n'
