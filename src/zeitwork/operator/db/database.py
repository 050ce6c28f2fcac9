"""The async connection pool and how code borrows connections from it.

``Database`` wraps a ``psycopg_pool.AsyncConnectionPool`` built once in ``main.py``.
Connections are in autocommit mode: a single statement is one round trip; several
statements that must hold together run in ``db.transaction()``. Every psycopg error
leaving these context managers is translated (see ``errors.py``).

Stores take an optional ``conn`` so that a service can compose several store calls into
one transaction::

    async with db.transaction() as conn:
        node = await nodes.upsert(reg, conn=conn)
        await changes.bump(conn, assignments_topic(node.id))
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from zeitwork.operator.db.errors import translating

Conn = AsyncConnection[Any]
"""A borrowed connection (what stores accept as ``conn=``)."""


class Database:
    def __init__(
        self,
        *,
        url: str,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        name: str = "zeitwork-operator",
    ) -> None:
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=timeout,
            open=False,
            name=name,
            kwargs={"autocommit": True, "connect_timeout": max(2, int(timeout))},
            reconnect_timeout=3600.0,
        )

    async def open(self, *, wait: bool = False, wait_seconds: float = 30.0) -> None:
        """Open the pool; with ``wait`` fail (ServiceUnavailable) unless it connects."""
        with translating():
            await self._pool.open(wait=wait, timeout=wait_seconds)

    async def close(self) -> None:
        await self._pool.close()

    def connection(self, conn: Conn | None = None) -> _Borrowed:
        """Borrow a connection (or reuse ``conn`` when the caller already holds one)."""
        return _Borrowed(self._pool, conn)

    @asynccontextmanager
    async def transaction(self, conn: Conn | None = None) -> AsyncIterator[Conn]:
        """A transaction: on a new connection, or a savepoint inside ``conn``'s."""
        async with self.connection(conn) as held:
            with translating():
                async with held.transaction():
                    yield held

    async def ping(self) -> str | None:
        """Readiness probe: None when a query answers, else the reason."""
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # any failure means "not ready"; report why
            return getattr(exc, "detail", None) or type(exc).__name__
        return None

    @property
    def conninfo(self) -> str:
        """The connection string (for dedicated connections such as the LISTEN one)."""
        return str(self._pool.conninfo)

    def stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())


class _Borrowed:
    """``async with db.connection() as conn``: a pooled connection, returned on exit.

    A small class rather than ``@asynccontextmanager`` around the pool's own context
    manager: this is on every request's path, and the connections are in autocommit mode,
    so there is no implicit transaction to commit on the way out (``putconn`` rolls back
    and resets a connection left inside a transaction, and discards a broken one).
    """

    __slots__ = ("_conn", "_given", "_pool")

    def __init__(self, pool: AsyncConnectionPool[Conn], given: Conn | None) -> None:
        self._pool = pool
        self._given = given
        self._conn: Conn | None = None

    async def __aenter__(self) -> Conn:
        if self._given is not None:
            return self._given
        with translating():
            self._conn = await self._pool.getconn()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        await self._pool.putconn(conn)
        if isinstance(exc, psycopg.Error):
            with translating():
                raise exc
