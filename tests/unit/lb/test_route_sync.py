from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import structlog

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.lb.route_sync import RouteSync
from zeitwork.lb.router import BackendRegistry, RouteTableRouter
from zeitwork.wire.routes import Route, RouteBackend, RouteTable


class FakeSource:
    """Answers like the operator: at once when the version differs, else after ``wait``."""

    def __init__(self) -> None:
        self.table = RouteTable(version=1, routes=[])
        self.calls: list[tuple[int | None, float]] = []
        self.fail = False
        self.changed = asyncio.Event()

    async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable:
        self.calls.append((version, wait))
        if self.fail:
            raise ServiceUnavailable("operator is unreachable")
        if version == self.table.version and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
        return self.table

    def publish(self, host: str, address: str) -> None:
        self.table = RouteTable(
            version=self.table.version + 1,
            routes=[
                Route(
                    host=host, deployment_id=uuid.uuid4(), backends=[RouteBackend(address=address)]
                )
            ],
        )
        self.changed.set()
        self.changed = asyncio.Event()


def make(tmp_path: Path, source: FakeSource, **kw: float) -> tuple[RouteSync, RouteTableRouter]:
    router = RouteTableRouter(registry=BackendRegistry())
    sync = RouteSync(
        source=source,
        router=router,
        cache=tmp_path / "lb" / "routes.json",
        log=structlog.get_logger("test"),
        **kw,
    )
    return sync, router


async def wait_for(predicate: object, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_long_poll_applies_changes_and_writes_the_cache(tmp_path: Path) -> None:
    source = FakeSource()
    sync, router = make(tmp_path, source, wait=5.0, full_refresh=60.0)
    task = asyncio.create_task(sync.run())
    await sync.synced.wait()
    assert router.version == 1
    source.publish("a.test", "10.0.0.1:80")
    await wait_for(lambda: router.version == 2)
    pool = router.resolve("a.test", "/")
    assert pool is not None and [b.address for b in pool.backends] == ["10.0.0.1:80"]
    assert (1, 5.0) in source.calls  # waited on the version it had
    cached = RouteTable.model_validate_json((tmp_path / "lb" / "routes.json").read_text())
    assert cached.version == 2
    task.cancel()


async def test_periodic_full_refresh(tmp_path: Path) -> None:
    source = FakeSource()
    sync, _ = make(tmp_path, source, wait=5.0, full_refresh=0.2)
    task = asyncio.create_task(sync.run())
    await wait_for(lambda: sum(1 for v, _ in source.calls if v is None) >= 3)
    task.cancel()


async def test_failures_back_off_and_are_reported(tmp_path: Path) -> None:
    source = FakeSource()
    source.fail = True
    sync, router = make(tmp_path, source, retry_max=0.05)
    task = asyncio.create_task(sync.run())
    await wait_for(lambda: len(source.calls) >= 3)
    assert sync.last_error is not None and "unreachable" in sync.last_error
    assert router.version is None
    source.fail = False
    await sync.synced.wait()
    assert sync.last_error is None
    task.cancel()


def test_cache_is_loaded_and_bad_cache_is_ignored(tmp_path: Path) -> None:
    source = FakeSource()
    sync, router = make(tmp_path, source)
    assert not sync.load_cache()  # nothing yet
    cache = tmp_path / "lb" / "routes.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert not sync.load_cache()
    table = RouteTable(
        version=7,
        routes=[Route(host="a.test", backends=[RouteBackend(address="10.0.0.1:80")])],
    )
    cache.write_text(table.model_dump_json())
    assert sync.load_cache()
    assert router.version == 7
