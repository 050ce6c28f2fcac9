"""Fixtures for operator tests: a real migrated PostgreSQL database per test and the
operator app on it, driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from zeitwork.core.clock import FakeClock
from zeitwork.observability import new_registry
from zeitwork.operator.app import create_app
from zeitwork.operator.db.database import Database
from zeitwork.operator.deps import Deps, build_deps
from zeitwork.operator.principal import Scope
from zeitwork.operator.settings import OperatorSettings

ENV_ADMIN = "zw_env-admin-token-for-tests-0123456789abcdef"


@dataclass
class Operator:
    client: httpx.AsyncClient
    deps: Deps
    clock: FakeClock
    admin_token: str
    url: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    async def token(self, scope: Scope, *, node_id: Any = None) -> str:
        _token, secret = await self.deps.token_service.issue(scope, node_id=node_id)
        return secret

    async def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self.deps.db.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []


def make_settings(url: str, data_dir: Path, **overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "database_url": url,
        "data_dir": data_dir,
        "admin_token": ENV_ADMIN,
        "db_timeout": 2.0,
        "db_pool_min": 1,
        "db_pool_max": 8,
    }
    values.update(overrides)
    return OperatorSettings(**values)


OperatorFactory = Callable[..., Awaitable[Operator]]


@pytest.fixture
async def operator_factory(
    migrated_database: str, tmp_path: Path
) -> AsyncIterator[OperatorFactory]:
    """Build operator apps (each with its own pool) on the test's database."""
    opened: list[tuple[Database, httpx.AsyncClient]] = []
    built: list[Deps] = []

    async def make(*, url: str | None = None, wait: bool = True, **overrides: Any) -> Operator:
        db_url = url or migrated_database
        settings = make_settings(db_url, tmp_path, **overrides)
        db = Database(
            url=db_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout=settings.db_timeout,
        )
        await db.open(wait=wait, wait_seconds=10)
        clock = FakeClock()
        deps = build_deps(settings=settings, db=db, clock=clock, stopping=asyncio.Event())
        app = create_app(deps=deps, registry=new_registry())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://operator.test"
        )
        opened.append((db, client))
        built.append(deps)
        admin = ENV_ADMIN
        if wait:
            _tok, admin = await deps.token_service.issue(Scope.ADMIN, name="test admin")
        return Operator(client=client, deps=deps, clock=clock, admin_token=admin, url=db_url)

    yield make
    for deps in built:
        await deps.listener.close()
    for db, client in opened:
        await client.aclose()
        await db.close()


@pytest.fixture
async def operator(operator_factory: OperatorFactory) -> Operator:
    return await operator_factory()
