"""Regions: where nodes live (basic create, list, get, update, soft delete)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of


@dataclass(frozen=True, slots=True)
class Region:
    id: uuid.UUID
    name: str
    code: str
    country: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "id, name, code, country, created_at, updated_at"


def _region(row: dict[str, Any]) -> Region:
    return Region(**row)


class RegionStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def create(
        self, *, name: str, code: str, country: str | None = None, conn: Conn | None = None
    ) -> Region:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO regions (name, code, country) VALUES (%s, %s, %s) "
                f"RETURNING {_COLUMNS}",
                (name, code, country),
            )
            row = await cur.fetchone()
        assert row is not None
        return _region(row)

    async def get(self, region_id: uuid.UUID, *, conn: Conn | None = None) -> Region:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM regions WHERE id = %s AND deleted_at IS NULL",
                (region_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"region {region_id} does not exist")
        return _region(row)

    async def list_page(self, page: PageRequest, *, conn: Conn | None = None) -> Page[Region]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM regions WHERE deleted_at IS NULL" + PAGE_SQL,
                page.params(),
            )
            rows = await cur.fetchall()
        return page_of([_region(r) for r in rows], page)

    async def update(
        self,
        region_id: uuid.UUID,
        *,
        name: str | None = None,
        country: str | None = None,
        conn: Conn | None = None,
    ) -> Region:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE regions SET name = coalesce(%s, name), country = coalesce(%s, country) "
                f"WHERE id = %s AND deleted_at IS NULL RETURNING {_COLUMNS}",
                (name, country, region_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"region {region_id} does not exist")
        return _region(row)

    async def delete(self, region_id: uuid.UUID, *, conn: Conn | None = None) -> None:
        """Soft-delete; Conflict while live nodes are in the region."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "SELECT 1 FROM regions WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (region_id,),
            )
            if await cur.fetchone() is None:
                raise NotFound(f"region {region_id} does not exist")
            cur = await c.execute(
                "SELECT count(*) FROM nodes WHERE region_id = %s AND deleted_at IS NULL",
                (region_id,),
            )
            counted = await cur.fetchone()
            nodes = 0 if counted is None else int(counted[0])
            if nodes:
                raise Conflict(
                    f"region {region_id} still has {nodes} node(s)", extra={"nodes": nodes}
                )
            await c.execute("UPDATE regions SET deleted_at = now() WHERE id = %s", (region_id,))
