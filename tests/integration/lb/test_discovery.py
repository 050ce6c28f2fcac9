from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.lb.conftest import MakeLB, MakeOrigin, eventually, http
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

TOKEN = "proxy-token-for-tests"
MakeOperator = Callable[[], Awaitable["StubOperator"]]


class StubOperator:
    """A real HTTP server answering GET /api/v1/routes like the operator (long-poll)."""

    def __init__(self) -> None:
        self.table = RouteTable(version=1, routes=[])
        self.changed = asyncio.Event()
        self.requests: list[str] = []
        self.unauthorized = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> StubOperator:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, routes: list[Route], default: list[str] | None = None) -> None:
        self.table = RouteTable(
            version=self.table.version + 1,
            routes=routes,
            default_backends=[RouteBackend(address=a) for a in default or []],
        )
        self.changed.set()
        self.changed = asyncio.Event()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                target = lines[0].split(" ")[1]
                auth = [ln for ln in lines if ln.lower().startswith("authorization:")]
                self.requests.append(target)
                if not auth or auth[0].split(":", 1)[1].strip() != f"Bearer {TOKEN}":
                    self.unauthorized += 1
                    writer.write(b"HTTP/1.1 401 X\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                query = parse_qs(urlsplit(target).query)
                version = int(query.get("version", ["-1"])[0])
                wait = float(query.get("wait", ["0"])[0])
                if version == self.table.version and wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), wait)
                body = self.table.model_dump_json().encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def make_operator() -> AsyncIterator[Callable[[], Awaitable[StubOperator]]]:
    started: list[StubOperator] = []

    async def make() -> StubOperator:
        op = await StubOperator().start()
        started.append(op)
        return op

    yield make
    for op in started:
        await op.stop()


def route(host: str, *addresses: str) -> Route:
    return Route(
        host=host, deployment_id=uuid.uuid4(), backends=[RouteBackend(address=a) for a in addresses]
    )


async def test_routes_from_the_operator_and_a_change_is_live_within_a_second(
    make_origin: MakeOrigin, make_lb: MakeLB, make_operator: MakeOperator
) -> None:
    one, two, fallback = await make_origin("one"), await make_origin("two"), await make_origin("fb")
    operator = await make_operator()
    operator.publish([route("app.test", one.address)], default=[fallback.address])
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    assert (await http(lb.port, path="/who", host="app.test")).body == b"one"
    assert (await http(lb.port, path="/who", host="unknown.test")).body == b"fb"

    started = time.monotonic()
    operator.publish([route("app.test", two.address)], default=[fallback.address])

    async def switched() -> bool:
        return (await http(lb.port, path="/who", host="app.test")).body == b"two"

    await eventually(switched, timeout=3)
    assert time.monotonic() - started < 1.0
    assert any("wait=" in r for r in operator.requests)  # it long-polls
    assert operator.unauthorized == 0
    await operator.stop()


async def test_last_table_is_cached_and_used_when_the_operator_is_down(
    make_origin: MakeOrigin, make_lb: MakeLB, make_operator: MakeOperator
) -> None:
    one = await make_origin("one")
    operator = await make_operator()
    operator.publish([route("app.test", one.address)])
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    cache = lb.settings.route_cache
    await eventually(cache.exists)
    assert RouteTable.model_validate_json(cache.read_text()).version == operator.table.version
    await operator.stop()
    # a new balancer, operator unreachable: serves the cached routes right away
    dead_url = operator.url
    second = await make_lb(operator_url=dead_url, token=TOKEN)
    assert second.router.version == operator.table.version
    assert (await http(second.port, path="/who", host="app.test")).body == b"one"
    await eventually(lambda: second.sync is not None and second.sync.last_error is not None)
    health = await http(second.admin_port, path="/health", host="x")
    assert health.json()["operator_error"]


async def test_removed_backend_is_drained_not_cut(
    make_origin: MakeOrigin, make_lb: MakeLB, make_operator: MakeOperator
) -> None:
    old, new = await make_origin("old"), await make_origin("new")
    operator = await make_operator()
    operator.publish([route("app.test", old.address)])
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    in_flight = asyncio.create_task(http(lb.port, path="/slow/1.0", host="app.test"))
    await eventually(lambda: old.hits == 1)
    operator.publish([route("app.test", new.address)])
    await eventually(lambda: lb.router.version == operator.table.version)
    # new requests go to the new backend while the old one finishes its request
    names = Counter([(await http(lb.port, path="/who", host="app.test")).body for _ in range(3)])
    assert names == {b"new": 3}
    assert not in_flight.done()
    r = await in_flight
    assert r.status == 200 and r.body == b"old slow"
    assert old.address not in lb.backends.backends


async def test_wrong_token_is_reported_not_crashing(
    make_lb: MakeLB, make_operator: MakeOperator
) -> None:
    operator = await make_operator()
    lb = await make_lb(operator_url=operator.url, token="wrong")
    await eventually(lambda: lb.sync is not None and lb.sync.last_error is not None)
    assert lb.sync is not None
    assert str(lb.sync.last_error).startswith("AuthenticationRequired")
    assert operator.unauthorized >= 1
    r = await http(lb.port, path="/", host="app.test")
    assert r.status == 503


async def test_the_routes_health_check_arrives_with_the_table(
    make_origin: MakeOrigin, make_lb: MakeLB, make_operator: MakeOperator
) -> None:
    app = await make_origin("app")
    operator = await make_operator()
    check = HealthCheck(type="http", path="/ready/v2", interval=0.1, unhealthy_threshold=1)
    operator.publish([route("app.test", app.address).model_copy(update={"health_check": check})])
    lb = await make_lb(operator_url=operator.url, token=TOKEN)
    await eventually(lambda: lb.router.version == operator.table.version)
    await eventually(lambda: ("/ready/v2", app.address) in app.checks)
    app.ready_status = 500
    backend = lb.backends.backends[app.address]
    await eventually(lambda: not backend.available, timeout=3)
    # the next release checks with tcp: the same instance is back at the next pass
    operator.publish(
        [
            route("app.test", app.address).model_copy(
                update={"health_check": HealthCheck(type="tcp", interval=0.1)}
            )
        ]
    )
    await eventually(lambda: backend.available, timeout=3)
    assert backend.check.kind == "tcp"
