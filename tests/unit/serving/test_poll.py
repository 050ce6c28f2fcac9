"""VersionedPoll against a fake source that answers like the operator."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.serving.poll import VersionedPoll


@dataclass(frozen=True)
class State:
    version: int


class FakeSource:
    """At once when ``version`` differs from the current one (or is None), else after a
    change or ``wait`` s; ``fail`` makes the next fetches raise."""

    def __init__(self) -> None:
        self.version = 1
        self.calls: list[tuple[int | None, float]] = []
        self.fail = 0
        self.changed = asyncio.Event()

    async def fetch(self, version: int | None, wait: float) -> State:
        self.calls.append((version, wait))
        if self.fail:
            self.fail -= 1
            raise ServiceUnavailable("operator is unreachable")
        if version == self.version and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
        return State(self.version)

    def publish(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


def make(source: FakeSource, applied: list[tuple[int, bool]], **kw: Any) -> VersionedPoll[State]:
    def apply(state: State, full: bool) -> None:
        applied.append((state.version, full))

    return VersionedPoll(
        fetch=source.fetch,
        apply=apply,
        log=structlog.get_logger("test"),
        failed_event="test.fetch_failed",
        **kw,
    )


async def test_first_fetch_is_full_then_long_polls_on_the_version_applied() -> None:
    source, applied = FakeSource(), []
    poll = make(source, applied, wait=5.0, full_refresh=60.0)
    assert await poll.poll_once() == 0.0
    assert poll.version == 1 and poll.synced.is_set()
    fetch = asyncio.create_task(poll.poll_once())
    await asyncio.sleep(0.05)
    assert not fetch.done()  # waiting: nothing changed
    source.publish()
    await asyncio.wait_for(fetch, 5)
    assert source.calls == [(None, 0.0), (1, 5.0)]
    assert applied == [(1, True), (2, False)]
    assert poll.version == 2


async def test_an_unchanged_answer_is_not_applied_again() -> None:
    source, applied = FakeSource(), []
    poll = make(source, applied, wait=0.01, full_refresh=60.0)
    await poll.poll_once()
    await poll.poll_once()  # times out with the same version
    assert applied == [(1, True)]


async def test_the_long_poll_never_waits_past_the_next_full_refresh() -> None:
    source, applied = FakeSource(), []
    poll = make(source, applied, wait=30.0, full_refresh=2.5)
    await poll.poll_once()
    task = asyncio.create_task(poll.poll_once())
    await asyncio.sleep(0.05)
    task.cancel()
    (version, wait) = source.calls[1]
    assert version == 1 and 1.0 <= wait <= 2.5


async def test_full_refresh_reapplies_the_same_version() -> None:
    source, applied = FakeSource(), []
    poll = make(source, applied, wait=0.05, full_refresh=0.1)
    task = asyncio.create_task(poll.run())
    try:
        async with asyncio.timeout(10):
            while sum(1 for _, full in applied if full) < 3:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert {version for version, _ in applied} == {1}
    assert sum(1 for v, _ in source.calls if v is None) >= 3


async def test_failures_back_off_doubling_with_jitter_and_a_success_resets() -> None:
    source, applied = FakeSource(), []
    source.fail = 6
    poll = make(source, applied, retry_base=1.0, retry_max=8.0, jitter=0.25)
    sleeps = [await poll.poll_once() for _ in range(6)]
    for sleep, nominal in zip(sleeps, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0], strict=True):
        assert 0.75 * nominal <= sleep <= nominal
    assert poll.last_error == "ServiceUnavailable: operator is unreachable"
    assert not poll.synced.is_set() and applied == []
    assert await poll.poll_once() == 0.0
    assert poll.last_error is None and applied == [(1, True)]
    source.fail = 1
    assert 0.75 <= await poll.poll_once() <= 1.0  # back at the start of the back-off


def test_jitter_spreads_the_first_retry_of_many_pollers() -> None:
    source = FakeSource()
    delays = {
        make(source, [], retry_base=1.0, jitter=0.5, rng=random.Random(seed)).next_delay()
        for seed in range(20)
    }
    assert len(delays) == 20 and all(0.5 <= d <= 1.0 for d in delays)


async def test_on_error_sees_each_failure() -> None:
    source, seen = FakeSource(), []
    source.fail = 2
    poll = VersionedPoll(
        fetch=source.fetch,
        apply=lambda state, full: None,
        log=structlog.get_logger("test"),
        failed_event="test.fetch_failed",
        on_error=seen.append,
    )
    await poll.poll_once()
    await poll.poll_once()
    assert [type(exc) for exc in seen] == [ServiceUnavailable, ServiceUnavailable]


async def test_an_apply_bug_ends_the_poll_unless_it_is_listed() -> None:
    source = FakeSource()

    def broken(state: State, full: bool) -> None:
        raise RuntimeError("a bug")

    log = structlog.get_logger("test")
    strict = VersionedPoll(fetch=source.fetch, apply=broken, log=log, failed_event="x")
    with pytest.raises(RuntimeError):
        await strict.poll_once()
    lenient = VersionedPoll(
        fetch=source.fetch, apply=broken, log=log, failed_event="x", apply_errors=(RuntimeError,)
    )
    assert await lenient.poll_once() > 0
    assert lenient.version is None and lenient.last_error == "RuntimeError: a bug"
