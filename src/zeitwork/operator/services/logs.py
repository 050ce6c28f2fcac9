"""An app's logs, fanned in from the node agents of its instances.

Agents keep each instance's output in size-capped rotated files and serve it per instance
(tail, follow), each line with the time it was written and its stream (stdout or stderr).
The operator reads every instance of the app (filtered by environment, release, instance),
labels each line with its instance, node and release, and merges them by their write times
(a line an agent kept without a time, from before timestamps, takes the time the operator
read it). ``since`` and ``until`` cut by those times, line by line.

A followed stream holds each line ``REORDER_SECONDS`` after it arrived and lets lines out in
time order (``ReorderWindow``): lines of several instances that arrive within that window of
each other come out merged by time; one that comes later than that is let out at once
(never dropped). Lines of one instance always keep their order.

Following re-reads the instance list every ``LIST_SECONDS``: a new instance (a rollout's,
a replacement) is read from its first line, a removed one is read until its output ends
(at most ``REMOVED_GRACE_SECONDS``), and an instance that restarts is read again from the
start of its new output. A stream that breaks while the same workload runs is reopened with
its last ``OVERLAP`` lines and the part already sent is skipped (``OverlapSkipper``). A node
that cannot be reached is said inline (``{"notice": "node X: unreachable, retrying"}``) and
retried with back-off; never dropped silently.

Memory is bounded: readers put records into one queue of ``QUEUE_RECORDS`` records; when the
client is slow the queue fills, the readers wait and the agents' streams wait with them (TCP
flow control), and the client is cut off by the stream response's send timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog

from zeitwork.clients.agent import (
    MAX_TAIL,
    AgentClient,
    AgentClients,
    AgentInstance,
    AgentLogLine,
)
from zeitwork.core.clock import Clock
from zeitwork.core.errors import (
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from zeitwork.core.states import InstanceState
from zeitwork.operator.db.app_refs import AppRefs, LogSource
from zeitwork.operator.db.nodes import AgentEndpoint, NodeStore

log = structlog.get_logger("zeitwork.operator.logs")

LIST_SECONDS = 1.0
REMOVED_GRACE_SECONDS = 15.0
OVERLAP = 200
QUEUE_RECORDS = 1000
REORDER_SECONDS = 0.2
"""How long a followed line waits for earlier lines of other instances (its added delay)."""
HISTORY_LINES = 20_000
"""The most lines one answer without ``follow`` holds (its memory bound)."""
BATCH_RECORDS = 256
RETRY_INITIAL = 0.5
RETRY_MAX = 5.0
_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LIVE = (InstanceState.PENDING, InstanceState.STARTING, InstanceState.RUNNING)


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledLine:
    ts: datetime
    instance_id: uuid.UUID
    node_id: uuid.UUID
    release: str | None
    line: str
    stream: str = "stdout"
    partial: bool = False  # the line goes on in the next one of this instance

    def to_json(self) -> str:
        return json.dumps(
            {
                "ts": rfc3339(self.ts),
                "instance_id": str(self.instance_id),
                "node_id": str(self.node_id),
                "release": self.release,
                "stream": self.stream,
                "line": self.line,
                "partial": self.partial,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class Notice:
    notice: str

    def to_json(self) -> str:
        return json.dumps({"notice": self.notice}, ensure_ascii=False, separators=(",", ":"))


Record = LabelledLine | Notice


# -- pure decisions ------------------------------------------------------------------------


def rfc3339(ts: datetime) -> str:
    """UTC with microseconds and a ``Z``: ``2026-12-07T03:04:05.123456Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_tail(tail: int, instances: int) -> int:
    """Lines per instance for an answer: ``tail``, shared out when ``instances * tail``
    would pass ``HISTORY_LINES`` (pure)."""
    if instances <= 0:
        return tail
    return min(tail, max(1, HISTORY_LINES // instances))


def release_label(version: int | None) -> str | None:
    return None if version is None else f"v{version}"


def parse_since(text: str, *, now: datetime, what: str = "since") -> datetime:
    """``10m``/``30s``/``2h``/``7d`` before ``now``, or an RFC 3339 time."""
    value = text.strip()
    match = _DURATION.match(value)
    if match is not None:
        try:
            return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
        except OverflowError:
            raise InvalidInput(f"{what} reaches back before the year 1") from None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{what} must be a duration such as 10m or an RFC 3339 time, got {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{what} needs a time zone (2026-12-07T10:00:00Z)")
    return parsed


def merge(batches: Sequence[Sequence[LabelledLine]]) -> list[LabelledLine]:
    """Lines of several instances in time order; lines of one instance keep their order
    and, at equal times, earlier batches come first (pure, stable)."""
    keyed = [
        [(line.ts, index, position, line) for position, line in enumerate(batch)]
        for index, batch in enumerate(batches)
    ]
    return [item[3] for item in heapq.merge(*keyed, key=lambda item: item[:3])]


def labelled(
    line: AgentLogLine,
    source: LogSource,
    *,
    read_at: datetime,
) -> LabelledLine:
    """An agent's line labelled with its instance, node and release; timed by when it was
    written, or ``read_at`` when the agent did not record that (pure)."""
    return LabelledLine(
        line.ts if line.ts is not None else read_at,
        source.instance_id,
        source.node_id,
        release_label(source.version),
        line.text,
        line.stream,
        line.partial,
    )


def within(line: LabelledLine, *, since: datetime | None, until: datetime | None) -> bool:
    """Whether a line was written in ``[since, until]`` (an open end: no bound) (pure)."""
    return (since is None or line.ts >= since) and (until is None or line.ts <= until)


def wanted_sources(sources: Sequence[LogSource], *, since: datetime | None) -> list[LogSource]:
    """Instances worth reading: live ones, and ended ones that ended after ``since``."""
    return [s for s in sources if since is None or s.state in _LIVE or s.state_changed_at >= since]


T = TypeVar("T")


@dataclass(slots=True)
class OverlapSkipper(Generic[T]):
    """Skips what a reopened stream repeats. The stream starts with the last lines of the
    same output, some of which were already sent (``seen``, oldest first): the longest
    prefix of the stream that is a suffix of ``seen`` is dropped, the rest passes. Lines are
    held (at most ``len(seen)``) only until that is decided (pure)."""

    seen: Sequence[T]
    _held: list[T] = field(default_factory=list)
    _active: list[int] = field(default_factory=list)  # where in seen a match may start
    _best: int = 0  # the longest overlap found complete so far
    _decided: bool = False

    def __post_init__(self) -> None:
        self._active = list(range(len(self.seen)))
        self._decided = not self.seen

    def feed(self, line: T) -> list[T]:
        """The lines that pass now (in order)."""
        if self._decided:
            return [line]
        offset = len(self._held)
        self._held.append(line)
        still: list[int] = []
        for start in self._active:
            if self.seen[start + offset] != line:
                continue
            if start + offset + 1 == len(self.seen):
                self._best = max(self._best, offset + 1)
            else:
                still.append(start)
        self._active = still
        if still and len(self.seen) - min(still) > self._best:
            return []  # a longer overlap may still complete
        self._decided = True
        passed = self._held[self._best :]
        self._held, self._active = [], []
        return passed

    def flush(self) -> list[T]:
        """The stream ended undecided: what it held matched old output; nothing passes."""
        self._decided = True
        self._held, self._active = [], []
        return []


@dataclass(frozen=True, slots=True)
class ReaderPlan:
    """What a follower changes after listing the app's instances."""

    start: tuple[tuple[LogSource, int], ...] = ()  # new readers: (instance, tail)
    removed_at: dict[uuid.UUID, float | None] = field(default_factory=dict)
    cancel: tuple[uuid.UUID, ...] = ()


def plan_readers(
    listed: Sequence[LogSource],
    readers: dict[uuid.UUID, float | None],
    *,
    now: float,
    first: bool,
    tail: int,
    grace: float = REMOVED_GRACE_SECONDS,
) -> ReaderPlan:
    """``readers``: the instances read now, each with when it left the listing (None: it
    is listed). A listed instance without a reader gets one: with ``tail`` lines of history
    on the first listing, else from its first line (it is new). One no longer listed keeps
    its reader for ``grace`` seconds (its last lines), then it is cancelled (pure)."""
    listed_ids = {s.instance_id for s in listed}
    start = tuple((s, tail if first else MAX_TAIL) for s in listed if s.instance_id not in readers)
    removed_at: dict[uuid.UUID, float | None] = {}
    cancel: list[uuid.UUID] = []
    for instance_id, since in readers.items():
        if instance_id in listed_ids:
            if since is not None:
                removed_at[instance_id] = None  # listed again
        elif since is None:
            removed_at[instance_id] = now
        elif now - since >= grace:
            cancel.append(instance_id)
    return ReaderPlan(start=start, removed_at=removed_at, cancel=tuple(cancel))


def is_new_output(before: AgentInstance, now: AgentInstance) -> bool:
    """Whether the instance's output is another run's than when its stream was opened
    (pure): the agent names each run (``workload``); an agent that does not is taken at
    its restart count (a restart that it resets after a stable run is missed: the
    overlap skipping then keeps duplicates out)."""
    if before.workload is not None and now.workload is not None:
        return before.workload != now.workload
    return now.restarts > before.restarts


def notice_for(hostname: str, problem: str) -> Notice:
    return Notice(f"node {hostname}: {problem}")


@dataclass(slots=True)
class ReorderWindow:
    """Followed lines of several instances let out in time order (pure: the caller passes
    its monotonic clock). Each line is held ``hold`` seconds after it arrived, and lines
    leave lowest time first; one that arrives after a later line has left is let out at
    once (never dropped). A line is held at most ``2 * hold`` (an instance whose times lag,
    a node's clock behind, holds the others no longer than that) and at most ``limit``
    lines are held. Lines of one instance leave in the order they came: each is keyed at
    least at its predecessor's time."""

    hold: float = REORDER_SECONDS
    limit: int = QUEUE_RECORDS
    _heap: list[tuple[datetime, int, float, LabelledLine]] = field(default_factory=list)
    _arrivals: deque[tuple[float, int]] = field(default_factory=deque)
    _held: set[int] = field(default_factory=set)
    _last: dict[uuid.UUID, datetime] = field(default_factory=dict)
    _count: int = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, line: LabelledLine, *, now: float) -> None:
        key = max(line.ts, self._last.get(line.instance_id, line.ts))
        self._last[line.instance_id] = key
        self._count += 1
        heapq.heappush(self._heap, (key, self._count, now + self.hold, line))
        self._arrivals.append((now, self._count))
        self._held.add(self._count)

    def _oldest(self) -> float | None:
        while self._arrivals and self._arrivals[0][1] not in self._held:
            self._arrivals.popleft()
        return self._arrivals[0][0] if self._arrivals else None

    def ready(self, *, now: float) -> list[LabelledLine]:
        """The lines that leave now, in order."""
        out: list[LabelledLine] = []
        while self._heap:
            oldest = self._oldest()
            overdue = oldest is not None and oldest + 2 * self.hold <= now
            if not (self._heap[0][2] <= now or overdue or len(self._heap) > self.limit):
                break
            _key, number, _due, line = heapq.heappop(self._heap)
            self._held.discard(number)
            out.append(line)
        if not self._heap:
            self._last.clear()  # nothing held: no order left to keep
        return out

    def next_due(self) -> float | None:
        """When ``ready`` next lets a line out (None: none is held)."""
        if not self._heap:
            return None
        oldest = self._oldest()
        due = self._heap[0][2]
        return due if oldest is None else min(due, oldest + 2 * self.hold)


# -- the fan-in ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogScope:
    project_id: uuid.UUID
    environment_id: uuid.UUID | None
    version: int | None = None
    instance_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None  # history only


class LogFanIn:
    def __init__(
        self,
        *,
        refs: AppRefs,
        nodes: NodeStore,
        clients: AgentClients,
        clock: Clock,
        list_seconds: float = LIST_SECONDS,
    ) -> None:
        self._refs = refs
        self._nodes = nodes
        self._clients = clients
        self._clock = clock
        self._list_seconds = list_seconds

    async def _sources(
        self, scope: LogScope
    ) -> tuple[list[LogSource], dict[uuid.UUID, AgentEndpoint]]:
        listed = await self._refs.log_sources(
            scope.project_id,
            environment_id=scope.environment_id,
            version=scope.version,
            instance_id=scope.instance_id,
        )
        sources = wanted_sources(listed, since=scope.since)
        endpoints = await self._nodes.agent_endpoints(s.node_id for s in sources)
        return sources, endpoints

    async def _client(self, endpoint: AgentEndpoint) -> AgentClient | None:
        if not endpoint.url or not endpoint.token:
            return None
        return await self._clients.get(endpoint.node_id, url=endpoint.url, token=endpoint.token)

    async def history(self, scope: LogScope, *, tail: int) -> list[Record]:
        """The last ``tail`` lines of each instance (fewer when many instances would pass
        ``HISTORY_LINES`` in all), merged; notices first."""
        sources, endpoints = await self._sources(scope)
        tail = history_tail(tail, len(sources))

        async def read(source: LogSource) -> list[LabelledLine] | Notice:
            endpoint = endpoints.get(source.node_id)
            hostname = endpoint.hostname if endpoint else str(source.node_id)
            client = await self._client(endpoint) if endpoint else None
            if client is None:
                return notice_for(hostname, "the node's agent registered no API address")
            try:
                lines = await client.log_tail(source.instance_id, tail=tail)
            except NotFound:
                return []
            except (AuthenticationRequired, PermissionDenied):
                return notice_for(hostname, "the agent refused the operator's credential")
            except ServiceUnavailable:
                return notice_for(hostname, "unreachable")
            now = self._clock.now()
            labelled_lines = (labelled(line, source, read_at=now) for line in lines)
            return [x for x in labelled_lines if within(x, since=scope.since, until=scope.until)]

        results = await asyncio.gather(*(read(s) for s in sources))
        notices: list[Record] = []
        for item in results:
            if isinstance(item, Notice) and item not in notices:
                notices.append(item)
        merged = merge([item for item in results if not isinstance(item, Notice)])
        return [*notices, *merged]

    async def follow(
        self, scope: LogScope, *, tail: int, keepalive: float
    ) -> AsyncIterator[list[Record]]:
        """Batches of records as they come, for ever; an empty batch after ``keepalive``
        seconds without any (the caller writes a keep-alive). ``tail`` lines of history
        first from the instances there at the start."""
        follow = _Follow(fan_in=self, scope=scope, tail=tail)
        async for batch in follow.run(keepalive=keepalive):
            yield batch

    # used by _Follow
    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def list_seconds(self) -> float:
        return self._list_seconds


@dataclass(slots=True)
class _Reader:
    source: LogSource
    task: asyncio.Task[None]
    removed_at: float | None = None


class _Follow:
    """One follower's readers and queue (see the module doc)."""

    def __init__(self, *, fan_in: LogFanIn, scope: LogScope, tail: int) -> None:
        self._fan_in = fan_in
        self._scope = scope
        self._tail = tail
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        self._readers: dict[uuid.UUID, _Reader] = {}
        self._endpoints: dict[uuid.UUID, AgentEndpoint] = {}
        self._down: set[uuid.UUID] = set()  # nodes said to be unreachable

    async def run(self, *, keepalive: float) -> AsyncIterator[list[Record]]:
        lister = asyncio.create_task(self._list_loop(), name="logs-list")
        loop = asyncio.get_running_loop()
        window = ReorderWindow()
        getter: asyncio.Future[Record] | None = None
        last_sent = loop.time()
        try:
            while True:
                ready: list[Record] = list(window.ready(now=loop.time()))
                if ready:
                    last_sent = loop.time()
                    yield ready
                    continue
                wake = last_sent + keepalive
                due = window.next_due()
                if due is not None:
                    wake = min(wake, due)
                if getter is None:
                    getter = asyncio.ensure_future(self._queue.get())
                waited: set[asyncio.Future[Any]] = {getter, lister}
                done, _ = await asyncio.wait(
                    waited,
                    timeout=max(0.0, wake - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    arrived = [getter.result()]
                    getter = None
                    while len(arrived) < BATCH_RECORDS and not self._queue.empty():
                        arrived.append(self._queue.get_nowait())
                    now = loop.time()
                    notices: list[Record] = []
                    for record in arrived:
                        if isinstance(record, Notice):
                            notices.append(record)  # said at once, not ordered by time
                        else:
                            window.push(record, now=now)
                    if notices:
                        last_sent = now
                        yield notices
                    continue
                if lister in done:
                    lister.result()  # raises what stopped it
                    return
                if loop.time() >= last_sent + keepalive and window.next_due() is None:
                    last_sent = loop.time()
                    yield []
        finally:
            if getter is not None:
                getter.cancel()
            lister.cancel()
            tasks: list[asyncio.Future[Any]] = [lister, *(r.task for r in self._readers.values())]
            if getter is not None:
                tasks.append(getter)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _list_loop(self) -> None:
        first = True
        database_down = False
        while True:
            try:
                sources, endpoints = await self._fan_in._sources(self._scope)
            except ServiceUnavailable:
                if not database_down:
                    await self._queue.put(
                        Notice("the operator's database is unavailable, retrying")
                    )
                database_down = True
                await asyncio.sleep(self._fan_in.list_seconds)
                continue
            database_down = False
            for reader in self._readers.values():
                if reader.task.done() and not reader.task.cancelled():
                    reader.task.result()  # a reader ends only by a bug: stop loudly
            self._endpoints.update(endpoints)
            plan = plan_readers(
                sources,
                {i: r.removed_at for i, r in self._readers.items()},
                now=asyncio.get_running_loop().time(),
                first=first,
                tail=self._tail,
            )
            for source, tail in plan.start:
                task = asyncio.create_task(
                    self._read(source, tail=tail), name=f"logs-{source.instance_id}"
                )
                self._readers[source.instance_id] = _Reader(source=source, task=task)
            for instance_id, removed_at in plan.removed_at.items():
                self._readers[instance_id].removed_at = removed_at
            for instance_id in plan.cancel:
                self._readers.pop(instance_id).task.cancel()
            first = False
            await asyncio.sleep(self._fan_in.list_seconds)

    def _endpoint(self, node_id: uuid.UUID) -> AgentEndpoint | None:
        return self._endpoints.get(node_id)

    async def _say_down(self, node_id: uuid.UUID, hostname: str, problem: str) -> None:
        if node_id not in self._down:
            self._down.add(node_id)
            log.info("logs.node_unreachable", node_id=str(node_id), problem=problem)
            await self._queue.put(notice_for(hostname, problem))

    async def _say_up(self, node_id: uuid.UUID, hostname: str) -> None:
        if node_id in self._down:
            self._down.discard(node_id)
            await self._queue.put(notice_for(hostname, "reachable again"))

    async def _read(self, source: LogSource, *, tail: int) -> None:
        """Follow one instance through reconnections and restarts, until cancelled."""
        seen: deque[AgentLogLine] = deque(maxlen=OVERLAP)
        last: AgentInstance | None = None  # the agent's view when the stream was last opened
        delay = RETRY_INITIAL
        clock = self._fan_in.clock

        since = self._scope.since

        async def emit(line: AgentLogLine) -> None:
            seen.append(line)
            labelled_line = labelled(line, source, read_at=clock.now())
            if within(labelled_line, since=since, until=None):
                await self._queue.put(labelled_line)

        while True:
            endpoint = self._endpoint(source.node_id)
            hostname = endpoint.hostname if endpoint else str(source.node_id)
            client = await self._fan_in._client(endpoint) if endpoint else None
            if client is None:
                await self._say_down(
                    source.node_id, hostname, "the node's agent registered no API address"
                )
                await asyncio.sleep(RETRY_MAX)
                continue
            try:
                view = await client.instance(source.instance_id)
                if last is None:
                    skipper: OverlapSkipper[AgentLogLine] = OverlapSkipper(seen=())
                    want = tail
                elif is_new_output(last, view):  # a new run writes a new file: all of it
                    seen.clear()
                    skipper, want = OverlapSkipper(seen=()), MAX_TAIL
                else:  # the same output: skip what was sent
                    skipper, want = OverlapSkipper(seen=tuple(seen)), len(seen)
                last = view
                await self._say_up(source.node_id, hostname)
                delivered = False
                async with client.follow_logs(source.instance_id, tail=want) as lines:
                    async for line in lines:
                        for passed in skipper.feed(line):
                            delivered = True
                            await emit(passed)
                for passed in skipper.flush():
                    delivered = True
                    await emit(passed)
                delay = RETRY_INITIAL
                if not delivered:  # ended at once (the workload is not running): poll
                    await asyncio.sleep(self._fan_in.list_seconds)
            except NotFound:  # not (yet, or no longer) on the node
                await asyncio.sleep(self._fan_in.list_seconds)
            except (AuthenticationRequired, PermissionDenied):
                await self._say_down(
                    source.node_id, hostname, "the agent refused the operator's credential"
                )
                await asyncio.sleep(RETRY_MAX)
            except ServiceUnavailable:
                await self._say_down(source.node_id, hostname, "unreachable, retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
