"""Backends leaving the route table during a release: in-flight requests finish, idle pooled
connections close, new requests go elsewhere; a backend that refuses connections costs no
failed request while another one serves the route. Real origins, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from tests.integration.lb.conftest import MakeLB, MakeOrigin, eventually, http, read_response
from tests.integration.lb.origin import Origin
from zeitwork.lb.main import LoadBalancer
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

# long interval: the balancer's own checks stay out of the way (one check at the start)
QUIET = HealthCheck(type="tcp", interval=60, unhealthy_threshold=3)


def publish(lb: LoadBalancer, *origins: Origin, host: str = "app.test") -> None:
    version = (lb.router.version or 0) + 1
    route = Route(
        host=host,
        release_id=uuid.uuid4(),
        health_check=QUIET,
        backends=[RouteBackend(address=o.address) for o in origins],
    )
    lb.router.apply(RouteTable(version=version, routes=[route]))


async def test_in_flight_request_finishes_while_its_backend_leaves_and_idle_ones_close(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    old, new = await make_origin("old"), await make_origin("new")
    lb = await make_lb(eject_failures=100)
    publish(lb, old)
    for _ in range(3):  # leaves a pooled keep-alive connection to the old backend
        assert (await http(lb.port, path="/who", host="app.test")).body == b"old"
    backend = lb.backends.backends[old.address]
    assert len(backend.idle) == 1 and old.open_connections == 1
    in_flight = asyncio.create_task(http(lb.port, path="/slow/1.0", host="app.test"))
    await eventually(lambda: old.hits == 4)
    assert old.open_connections == 1  # the pooled connection carries the slow request
    for _ in range(3):  # one more idle connection beside the busy one
        await http(lb.port, path="/who", host="app.test")
    await eventually(lambda: len(backend.idle) == 1 and old.open_connections == 2)

    publish(lb, new)  # the instance drains
    assert backend.draining and backend.idle == []
    await eventually(lambda: old.open_connections == 1)  # the idle one is closed now
    names = Counter([(await http(lb.port, path="/who", host="app.test")).body for _ in range(4)])
    assert names == {b"new": 4}
    assert not in_flight.done()
    r = await in_flight
    assert (r.status, r.body) == (200, b"old slow")
    await eventually(lambda: old.open_connections == 0)  # not pooled again after it ends
    assert backend.in_flight == 0


async def test_connect_refused_backend_gives_no_failed_request(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    live, dead = await make_origin("live"), await make_origin("dead")
    lb = await make_lb(eject_failures=100)  # no passive ejection: every pick of dead refuses
    publish(lb, dead, live)
    await dead.stop()  # stopped before the table says so (a crash, a fast stop)
    results = Counter()
    for method in ("GET", "HEAD", "GET", "PUT", "DELETE", "OPTIONS"):
        for _ in range(4):
            r = await http(lb.port, method, "/who", host="app.test")
            results[r.status] += 1
    assert results == {200: 24}
    assert lb.backends.backends[dead.address].failures >= 8  # it really was picked and refused


async def test_a_post_refused_at_connect_is_retried_elsewhere(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    """Nothing of a request reached a backend that refused the connection, so any method,
    a POST with its body too, goes to another backend instead of failing."""
    live, dead = await make_origin("live"), await make_origin("dead")
    lb = await make_lb(eject_failures=100)
    publish(lb, dead, live)
    await dead.stop()
    statuses = Counter()
    for _ in range(8):
        r = await http(lb.port, "POST", "/who", host="app.test", body=b"order=1")
        statuses[r.status] += 1
    assert statuses == {200: 8}
    assert lb.backends.backends[dead.address].failures >= 2


@dataclass
class Load:
    """A client sending requests the whole time, on one keep-alive connection and on new
    connections, recording every status and which version answered."""

    port: int
    statuses: Counter[int] = field(default_factory=Counter)
    answers: list[tuple[float, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, started: float, status: int, body: bytes) -> None:
        self.statuses[status] += 1
        self.answers.append((started, body))

    async def keep_alive(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                writer.write(b"GET /who HTTP/1.1\r\nHost: app.test\r\n\r\n")
                r = await asyncio.wait_for(read_response(reader), 5)
                self.record(started, r.status, r.body)
                if (r.header("connection") or "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.errors.append(f"keep-alive: {type(exc).__name__}: {exc}")
        finally:
            writer.transport.abort()

    async def new_connections(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                r = await http(self.port, path="/who", host="app.test")
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.errors.append(f"new connection: {type(exc).__name__}: {exc}")
                continue
            self.record(started, r.status, r.body)

    def since(self, moment: float) -> Counter[bytes]:
        """Who answered the requests sent after ``moment``."""
        return Counter(body for at, body in self.answers if at > moment)


async def test_rolling_release_under_load_fails_no_request(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    v1 = [await make_origin("v1"), await make_origin("v1")]
    v2 = [await make_origin("v2"), await make_origin("v2")]
    lb = await make_lb(eject_failures=100)
    publish(lb, *v1)
    load = Load(lb.port)
    clients = [asyncio.create_task(load.keep_alive())] + [
        asyncio.create_task(load.new_connections()) for _ in range(2)
    ]

    async def served(n: int) -> None:
        target = sum(load.statuses.values()) + n
        await eventually(lambda: sum(load.statuses.values()) >= target, timeout=10)

    try:
        await served(30)
        # rolling, one at a time: a new instance joins, an old one leaves the route, drains
        # and is stopped
        publish(lb, v1[0], v1[1], v2[0])
        await served(30)
        publish(lb, v1[1], v2[0])
        await served(10)
        await v1[0].stop()
        publish(lb, v1[1], v2[0], v2[1])
        await served(30)
        # the last old one stops listening a moment *before* the table drops it (a fast
        # stop): its refused connections are retried on v2
        v1[1].refuse_new()
        await served(30)
        publish(lb, *v2)
        switched = time.monotonic()
        await served(60)
        await v1[1].stop()
    finally:
        load.stop.set()
        for task in clients:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses
    assert set(load.since(switched)) == {b"v2"}
    assert sum(load.statuses.values()) >= 190
