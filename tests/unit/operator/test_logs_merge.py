"""The pure parts of the logs fan-in: merging by time, skipping what a reopened stream
repeats, ``since``/``until`` line by line, which instances are read, line splitting, the
agent's records, the reorder window of followed streams and record encoding."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from zeitwork.clients.agent import (
    MAX_TAIL,
    AgentInstance,
    AgentLogLine,
    parse_log_record,
    split_lines,
)
from zeitwork.core.errors import InvalidInput
from zeitwork.core.states import InstanceState
from zeitwork.operator.api.logs import _Ids
from zeitwork.operator.db.app_refs import LogSource
from zeitwork.operator.services.logs import (
    HISTORY_LINES,
    LabelledLine,
    Notice,
    OverlapSkipper,
    ReaderPlan,
    ReorderWindow,
    history_tail,
    is_new_output,
    labelled,
    merge,
    parse_since,
    plan_readers,
    release_label,
    rfc3339,
    wanted_sources,
    within,
)

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
A, B, NODE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def _line(instance: uuid.UUID, seconds: float, text: str) -> LabelledLine:
    return LabelledLine(T0 + timedelta(seconds=seconds), instance, NODE, "v1", text)


def test_merge_orders_by_time_and_keeps_each_instance_in_order() -> None:
    a = [_line(A, 0, "a0"), _line(A, 2, "a2"), _line(A, 2, "a2b")]
    b = [_line(B, 1, "b1"), _line(B, 2, "b2"), _line(B, 3, "b3")]
    assert [x.line for x in merge([a, b])] == ["a0", "b1", "a2", "a2b", "b2", "b3"]
    assert [x.line for x in merge([b, a])] == ["a0", "b1", "b2", "a2", "a2b", "b3"]


def test_merge_of_nothing() -> None:
    assert merge([]) == []
    assert merge([[], []]) == []


def test_merge_keeps_an_instances_order_even_when_its_times_go_back() -> None:
    # a stable merge never reorders one batch (a clock step back on the operator)
    a = [_line(A, 5, "first"), _line(A, 1, "second")]
    assert [x.line for x in merge([a])] == ["first", "second"]


def _skip(seen: list[str], stream: list[str], *, end: bool = True) -> list[str]:
    skipper = OverlapSkipper(seen=seen)
    out = [passed for line in stream for passed in skipper.feed(line)]
    return out + (skipper.flush() if end else [])


@pytest.mark.parametrize(
    ("seen", "stream", "passed"),
    [
        ([], ["a", "b"], ["a", "b"]),  # nothing seen: everything passes
        (["a", "b", "c"], ["a", "b", "c", "d"], ["d"]),  # all seen were re-sent
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # one scrolled out of the tail
        (["a", "b", "c"], ["x", "y"], ["x", "y"]),  # more was written than the tail holds
        (["a", "b", "c"], ["a", "b", "c"], []),  # nothing new
        (["x", "a", "a"], ["a", "a", "a"], ["a"]),  # repeats: the longest overlap wins
        (["a", "a", "a"], ["a", "a", "a", "a"], ["a"]),
        (["a", "b"], ["b", "b"], ["b"]),
        (["a", "b", "a"], ["b", "a", "c"], ["c"]),
    ],
)
def test_overlap_skipper(seen: list[str], stream: list[str], passed: list[str]) -> None:
    assert _skip(seen, stream) == passed


def test_overlap_skipper_passes_lines_as_soon_as_it_is_decided() -> None:
    skipper = OverlapSkipper(seen=["a", "b", "c"])
    assert skipper.feed("b") == []
    assert skipper.feed("c") == []  # "b c" is the longest overlap still possible: complete
    assert skipper.feed("d") == ["d"]
    assert skipper.feed("e") == ["e"]


def test_overlap_skipper_holds_at_most_what_was_seen() -> None:
    seen = [f"l{i}" for i in range(50)]
    skipper = OverlapSkipper(seen=seen)
    held = [skipper.feed(line) for line in seen[:49]]
    assert all(not h for h in held)
    assert skipper.feed("l49") == []
    assert skipper.feed("new") == ["new"]


def test_an_undecided_stream_that_ends_passes_nothing() -> None:
    assert _skip(["a", "b", "c"], ["a", "b"]) == []


@pytest.mark.parametrize(
    ("text", "delta"),
    [("10m", 600), ("30s", 30), ("2h", 7200), ("7d", 7 * 86400), (" 1m ", 60)],
)
def test_since_durations(text: str, delta: int) -> None:
    assert parse_since(text, now=T0) == T0 - timedelta(seconds=delta)


def test_since_times() -> None:
    assert parse_since("2026-12-07T01:00:00Z", now=T0) == datetime(2026, 12, 7, 1, tzinfo=UTC)
    assert parse_since("2026-12-07T03:00:00+02:00", now=T0) == datetime(2026, 12, 7, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "10", "10 minutes", "-5m", "yesterday", "2026-12-07T01:00"])
def test_bad_since(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_since(text, now=T0)


def _source(state: InstanceState, changed: float) -> LogSource:
    return LogSource(
        instance_id=uuid.uuid4(),
        node_id=NODE,
        release_id=None,
        version=1,
        state=state,
        created_at=T0,
        state_changed_at=T0 + timedelta(seconds=changed),
    )


def test_since_leaves_out_instances_that_ended_before_it() -> None:
    live = _source(InstanceState.RUNNING, -3600)
    ended_late = _source(InstanceState.STOPPED, -10)
    ended_early = _source(InstanceState.FAILED, -3600)
    sources = [live, ended_late, ended_early]
    assert wanted_sources(sources, since=None) == sources
    assert wanted_sources(sources, since=T0 - timedelta(minutes=1)) == [live, ended_late]


def test_split_lines() -> None:
    assert split_lines(b"", b"a\nb\r\nc", max_bytes=10) == ([b"a", b"b"], b"c")
    assert split_lines(b"c", b"d\n", max_bytes=10) == ([b"cd"], b"")
    assert split_lines(b"", b"x" * 25, max_bytes=10) == ([b"x" * 10, b"x" * 10], b"x" * 5)
    assert split_lines(b"", b"y" * 12 + b"\n", max_bytes=10) == ([b"y" * 10, b"yy"], b"")


def test_records_as_json() -> None:
    line = LabelledLine(T0, A, NODE, "v3", 'say "hi" ✓')
    assert json.loads(line.to_json()) == {
        "ts": "2026-12-07T03:00:00.000000Z",
        "instance_id": str(A),
        "node_id": str(NODE),
        "release": "v3",
        "stream": "stdout",
        "line": 'say "hi" ✓',
        "partial": False,
    }
    assert json.loads(Notice("node n1: unreachable, retrying").to_json()) == {
        "notice": "node n1: unreachable, retrying"
    }
    assert release_label(None) is None and release_label(7) == "v7"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2026-01-02T03:04:05.000006Z"


def test_sse_ids_grow_even_at_equal_times() -> None:
    ids = _Ids()
    first = ids.next(_line(A, 0, "x"))
    second = ids.next(_line(B, 0, "y"))
    assert first is not None and second is not None and int(second) == int(first) + 1
    assert ids.next(Notice("n")) is None


def _listed(*sources: LogSource) -> list[LogSource]:
    return list(sources)


def test_the_first_listing_reads_history_later_ones_read_new_instances_whole() -> None:
    one, two = _source(InstanceState.RUNNING, 0), _source(InstanceState.RUNNING, 0)
    plan = plan_readers(_listed(one), {}, now=0, first=True, tail=7)
    assert plan.start == ((one, 7),) and plan.cancel == () and plan.removed_at == {}
    plan = plan_readers(_listed(one, two), {one.instance_id: None}, now=1, first=False, tail=7)
    assert plan.start == ((two, MAX_TAIL),)


def test_a_removed_instance_is_read_for_the_grace_period_then_cancelled() -> None:
    one = _source(InstanceState.RUNNING, 0)
    readers: dict[uuid.UUID, float | None] = {one.instance_id: None}
    plan = plan_readers([], readers, now=10, first=False, tail=1, grace=15)
    assert plan.removed_at == {one.instance_id: 10} and plan.cancel == ()
    readers = {one.instance_id: 10}
    assert plan_readers([], readers, now=24.9, first=False, tail=1, grace=15).cancel == ()
    assert plan_readers([], readers, now=25, first=False, tail=1, grace=15).cancel == (
        one.instance_id,
    )


def test_an_instance_listed_again_keeps_its_reader() -> None:
    one = _source(InstanceState.RUNNING, 0)
    plan = plan_readers([one], {one.instance_id: 10}, now=12, first=False, tail=1)
    assert plan.start == () and plan.removed_at == {one.instance_id: None}
    assert plan_readers([one], {one.instance_id: None}, now=12, first=False, tail=1) == (
        ReaderPlan()
    )


def _view(workload: str | None, restarts: int = 0) -> AgentInstance:
    return AgentInstance(id=A, state=InstanceState.RUNNING, restarts=restarts, workload=workload)


def test_a_new_run_is_told_by_the_agents_workload_id() -> None:
    assert is_new_output(_view("w1"), _view("w2"))
    assert not is_new_output(_view("w1", restarts=2), _view("w1", restarts=0))  # reset: same run
    assert not is_new_output(_view("w1"), _view("w1"))


def test_without_workload_ids_a_grown_restart_count_means_a_new_run() -> None:
    assert is_new_output(_view(None, 1), _view(None, 2))
    assert not is_new_output(_view(None, 2), _view(None, 0))  # reset after a stable run
    assert not is_new_output(_view(None, 0), _view("w1", 0))  # the first run got its handle


def test_history_is_shared_out_within_its_bound() -> None:
    assert history_tail(100, 3) == 100
    assert history_tail(10_000, 4) == HISTORY_LINES // 4
    assert history_tail(10_000, 10**6) == 1
    assert history_tail(50, 0) == 50


# -- write times, streams, since/until per line, the reorder window ----------------------------


def test_agent_records_parse_with_time_stream_and_flag() -> None:
    record = b'{"ts":"2026-12-07T03:00:01.123456789Z","stream":"stderr","line":"x","partial":true}'
    assert parse_log_record(record) == AgentLogLine(
        text="x",
        stream="stderr",
        ts=datetime(2026, 12, 7, 3, 0, 1, 123456, tzinfo=UTC),
        partial=True,
    )
    # an old line (no time), an unknown stream, a broken record: kept, never dropped
    assert parse_log_record(b'{"ts":null,"stream":"x","line":"old"}') == AgentLogLine("old")
    assert parse_log_record(b'{"ts":"2026-12-07T03:00:01","line":"naive"}').ts is None
    assert parse_log_record(b"not json") == AgentLogLine("not json")
    assert parse_log_record(b'{"line": 5}') == AgentLogLine('{"line": 5}')


def test_a_line_is_timed_by_its_write_time_or_else_by_when_it_was_read() -> None:
    source = _source(InstanceState.RUNNING, 0)
    written = T0 - timedelta(seconds=2)
    line = labelled(AgentLogLine("x", "stderr", written, True), source, read_at=T0)
    assert (line.ts, line.stream, line.partial, line.release) == (written, "stderr", True, "v1")
    assert labelled(AgentLogLine("old"), source, read_at=T0).ts == T0


def test_since_and_until_cut_line_by_line() -> None:
    lines = [_line(A, s, f"l{s}") for s in (0, 1, 2, 3)]
    since, until = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    assert [x.line for x in lines if within(x, since=since, until=None)] == ["l1", "l2", "l3"]
    assert [x.line for x in lines if within(x, since=None, until=until)] == ["l0", "l1", "l2"]
    assert [x.line for x in lines if within(x, since=since, until=until)] == ["l1", "l2"]


def test_until_is_parsed_like_since_and_named_in_its_errors() -> None:
    assert parse_since("5m", now=T0, what="until") == T0 - timedelta(minutes=5)
    with pytest.raises(InvalidInput, match="until"):
        parse_since("soon", now=T0, what="until")
    with pytest.raises(InvalidInput, match="year 1"):
        parse_since("999999999d", now=T0)


def test_the_window_lets_lines_out_in_time_order_after_holding_them() -> None:
    window = ReorderWindow(hold=0.2)
    window.push(_line(A, 2, "a2"), now=0.0)  # came first, written later
    window.push(_line(B, 1, "b1"), now=0.05)
    assert window.ready(now=0.1) == []  # held
    assert window.next_due() == pytest.approx(0.25)  # b1 is the first to leave
    assert [x.line for x in window.ready(now=0.25)] == ["b1", "a2"]
    assert window.next_due() is None and len(window) == 0


def test_a_line_that_comes_too_late_leaves_at_once_and_is_not_dropped() -> None:
    window = ReorderWindow(hold=0.2)
    window.push(_line(A, 5, "a5"), now=0.0)
    assert [x.line for x in window.ready(now=0.2)] == ["a5"]
    window.push(_line(B, 1, "b1"), now=0.3)  # written before a5, came long after
    assert [x.line for x in window.ready(now=0.5)] == ["b1"]


def test_an_instance_whose_times_lag_holds_the_others_at_most_twice_the_window() -> None:
    window = ReorderWindow(hold=0.2)
    window.push(_line(A, 100, "a"), now=0.0)
    out: list[str] = []
    left_at: float | None = None
    for step in range(1, 8):  # B's lines (its node's clock behind) keep coming
        now = step * 0.1
        window.push(_line(B, step, f"b{step}"), now=now)
        out += [x.line for x in window.ready(now=now)]
        if left_at is None and "a" in out:
            left_at = now
    assert left_at == pytest.approx(0.4)  # 2 x 0.2 s after it came
    assert out[:5] == ["b1", "b2", "b3", "b4", "a"]  # still in time order


def test_an_instances_lines_keep_their_order_when_its_clock_steps_back() -> None:
    window = ReorderWindow(hold=0.2)
    window.push(_line(A, 5, "first"), now=0.0)
    window.push(_line(A, 1, "second"), now=0.0)
    window.push(_line(B, 3, "b"), now=0.0)
    assert [x.line for x in window.ready(now=1.0)] == ["b", "first", "second"]


def test_the_window_holds_at_most_its_limit() -> None:
    window = ReorderWindow(hold=10.0, limit=3)
    for i in range(5):
        window.push(_line(A, i, f"a{i}"), now=0.0)
    assert [x.line for x in window.ready(now=0.0)] == ["a0", "a1"]
    assert len(window) == 3
