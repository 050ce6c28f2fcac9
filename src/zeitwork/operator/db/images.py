"""Image rows: the catalogue over the content-addressed archive store.

One live row per digest: an import of an archive whose image is already catalogued returns
the existing row (serialised per digest by a transaction-scoped advisory lock, which a
deletion takes too, so a deletion never removes a file a concurrent import relies on).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class RegistryCredential:
    """A project's credentials for one registry; ``password_sealed`` is Fernet ciphertext."""

    project_id: uuid.UUID
    registry: str
    username: str
    password_sealed: str = field(repr=False)
    created_at: datetime
    updated_at: datetime


_CREDENTIAL_COLUMNS = "project_id, registry, username, password_sealed, created_at, updated_at"


class RegistryCredentialStore:
    """``registry_credentials`` rows (migration 0016): one per project and registry host."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def put(
        self,
        project_id: uuid.UUID,
        registry: str,
        username: str,
        password_sealed: str,
        *,
        conn: Conn | None = None,
    ) -> tuple[RegistryCredential, bool]:
        """Set (or replace) the credentials; (the row, created?)."""
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO registry_credentials (project_id, registry, username, "
                "password_sealed) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (project_id, registry) DO UPDATE SET username = EXCLUDED.username, "
                "password_sealed = EXCLUDED.password_sealed "
                f"RETURNING {_CREDENTIAL_COLUMNS}, (xmax = 0) AS created",
                (project_id, registry, username, password_sealed),
            )
            row = await cur.fetchone()
        assert row is not None
        created = bool(row.pop("created"))
        return RegistryCredential(**row), created

    async def list_for(
        self, project_id: uuid.UUID, *, conn: Conn | None = None
    ) -> list[RegistryCredential]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM registry_credentials "
                "WHERE project_id = %s ORDER BY registry",
                (project_id,),
            )
            rows = await cur.fetchall()
        return [RegistryCredential(**row) for row in rows]

    async def find(
        self, project_ref: str, registry: str, *, conn: Conn | None = None
    ) -> RegistryCredential | None:
        """The credentials of the live project ``project_ref`` (slug or id) for ``registry``."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT rc.project_id, rc.registry, rc.username, rc.password_sealed, "
                "rc.created_at, rc.updated_at FROM registry_credentials rc "
                "JOIN projects p ON p.id = rc.project_id "
                "WHERE p.deleted_at IS NULL AND (p.slug = %(ref)s OR p.id::text = %(ref)s) "
                "AND rc.registry = %(registry)s",
                {"ref": project_ref, "registry": registry},
            )
            row = await cur.fetchone()
        return None if row is None else RegistryCredential(**row)

    async def delete(
        self, project_id: uuid.UUID, registry: str, *, conn: Conn | None = None
    ) -> None:
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "DELETE FROM registry_credentials WHERE project_id = %s AND registry = %s",
                (project_id, registry),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no credentials for registry {registry} in this project")
