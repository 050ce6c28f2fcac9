"""Image rows: the catalogue over the content-addressed archive store.

One live row per digest: an import of an archive whose image is already catalogued returns
the existing row (serialised per digest by a transaction-scoped advisory lock, which a
deletion takes too, so a deletion never removes a file a concurrent import relies on).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.core.states import ImageState
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of


@dataclass(frozen=True, slots=True)
class Image:
    id: uuid.UUID
    name: str
    status: ImageState
    digest: str | None
    size: int | None
    media_type: str | None
    config: dict[str, Any]
    github_repo: str | None
    commit_sha: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


COLUMNS = (
    "id, name, status, digest, size, media_type, config, github_repo, commit_sha, error, "
    "created_at, updated_at"
)


def _image(row: dict[str, Any]) -> Image:
    return Image(**(row | {"status": ImageState(row["status"])}))


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))"


class ImageStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def get(self, image_id: uuid.UUID, *, conn: Conn | None = None) -> Image:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM images WHERE id = %s AND deleted_at IS NULL", (image_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"image {image_id} does not exist")
        return _image(row)

    async def list_page(
        self,
        page: PageRequest,
        *,
        status: ImageState | None = None,
        name: str | None = None,
        conn: Conn | None = None,
    ) -> Page[Image]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM images WHERE deleted_at IS NULL "
                "AND (%(status)s::text IS NULL OR status = %(status)s::text) "
                "AND (%(name)s::text IS NULL OR name = %(name)s::text)" + PAGE_SQL,
                {"status": None if status is None else status.value, "name": name} | page.params(),
            )
            rows = await cur.fetchall()
        return page_of([_image(r) for r in rows], page)

    async def add_imported(
        self,
        *,
        name: str,
        digest: str,
        size: int,
        media_type: str,
        config: dict[str, Any],
        conn: Conn | None = None,
    ) -> tuple[Image, bool]:
        """Catalogue an imported archive; (the live row for ``digest``, created?)."""
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(_LOCK, (digest,))
            await cur.execute(
                f"SELECT {COLUMNS} FROM images WHERE digest = %s AND deleted_at IS NULL "
                "AND status = 'ready' ORDER BY created_at LIMIT 1",
                (digest,),
            )
            row = await cur.fetchone()
            if row is not None:
                return _image(row), False
            await cur.execute(
                "INSERT INTO images (name, status, digest, size, media_type, config) "
                f"VALUES (%s, 'ready', %s, %s, %s, %s) RETURNING {COLUMNS}",
                (name, digest, size, media_type, Jsonb(config)),
            )
            row = await cur.fetchone()
        assert row is not None
        return _image(row), True

    async def set_location(
        self, image_id: uuid.UUID, location: str, *, conn: Conn | None = None
    ) -> Image:
        """Record where the platform registry keeps the image (``config.registry_location``)."""
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE images SET config = config || jsonb_build_object("
                "'registry_location', %s::text), updated_at = now() "
                f"WHERE id = %s AND deleted_at IS NULL RETURNING {COLUMNS}",
                (location, image_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"image {image_id} does not exist")
        return _image(row)

    async def delete(self, image_id: uuid.UUID, *, conn: Conn | None = None) -> str | None:
        """Soft-delete; Conflict while an instance that is not terminated, or a live
        deployment, uses it. Returns the digest when no live row uses it any more (the
        caller removes the archive while ``still_unused`` holds)."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "SELECT digest FROM images WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (image_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"image {image_id} does not exist")
            digest = row[0]
            cur = await c.execute(
                "SELECT (SELECT count(*) FROM instances WHERE image_id = %(id)s "
                "        AND state <> 'terminated'), "
                "       (SELECT count(*) FROM deployments WHERE image_id = %(id)s "
                "        AND deleted_at IS NULL AND state IN ('pending', 'deploying', 'active'))",
                {"id": image_id},
            )
            used = await cur.fetchone()
            assert used is not None
            if used[0] or used[1]:
                raise Conflict(
                    f"image {image_id} is used by {used[0]} instance(s) and {used[1]} "
                    "deployment(s)",
                    extra={"instances": used[0], "deployments": used[1]},
                )
            await c.execute("UPDATE images SET deleted_at = now() WHERE id = %s", (image_id,))
            if digest is None:
                return None
            await c.execute(_LOCK, (digest,))
            cur = await c.execute(
                "SELECT count(*) FROM images WHERE digest = %s AND deleted_at IS NULL", (digest,)
            )
            others = await cur.fetchone()
            return None if others and others[0] else str(digest)

    async def digest_unused(self, digest: str, *, conn: Conn | None = None) -> bool:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT count(*) FROM images WHERE digest = %s AND deleted_at IS NULL", (digest,)
            )
            row = await cur.fetchone()
        return not (row and row[0])
