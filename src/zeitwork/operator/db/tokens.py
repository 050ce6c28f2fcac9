"""API tokens: only the sha256 of a token is stored; revoking sets ``deleted_at``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from zeitwork.core.errors import NotFound
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of
from zeitwork.operator.principal import Scope


@dataclass(frozen=True, slots=True)
class Token:
    id: uuid.UUID
    name: str
    scope: Scope
    prefix: str
    node_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


_COLUMNS = (
    "id, name, scope, prefix, node_id, created_at, last_used_at, expires_at, "
    "deleted_at AS revoked_at"
)


def _token(row: dict[str, Any]) -> Token:
    return Token(**{**row, "scope": Scope(row["scope"])})


class TokenStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        *,
        token_hash: str,
        prefix: str,
        scope: Scope,
        name: str = "",
        node_id: uuid.UUID | None = None,
        expires_in: float | None = None,
        conn: Conn | None = None,
    ) -> Token:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO api_tokens (token_hash, prefix, scope, name, node_id, expires_at) "
                "VALUES (%s, %s, %s, %s, %s, "
                "now() + make_interval(secs => %s::double precision)) "
                f"RETURNING {_COLUMNS}",
                (token_hash, prefix, scope.value, name, node_id, expires_in),
            )
            row = await cur.fetchone()
        assert row is not None
        return _token(row)

    async def lookup(self, token_hash: str, *, conn: Conn | None = None) -> Token | None:
        """The live token with this hash (marking it used), or None."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE api_tokens SET last_used_at = now() "
                "WHERE token_hash = %s AND deleted_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > now()) "
                f"RETURNING {_COLUMNS}",
                (token_hash,),
            )
            row = await cur.fetchone()
        return None if row is None else _token(row)

    async def get(self, token_id: uuid.UUID, *, conn: Conn | None = None) -> Token:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = %s", (token_id,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"token {token_id} does not exist")
        return _token(row)

    async def list_page(
        self,
        page: PageRequest,
        *,
        scope: Scope | None = None,
        include_revoked: bool = False,
        conn: Conn | None = None,
    ) -> Page[Token]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM api_tokens "
                "WHERE (%(scope)s::text IS NULL OR scope = %(scope)s::text) "
                "AND (%(revoked)s OR deleted_at IS NULL)" + PAGE_SQL,
                {"scope": None if scope is None else scope.value, "revoked": include_revoked}
                | page.params(),
            )
            rows = await cur.fetchall()
        return page_of([_token(r) for r in rows], page)

    async def revoke(self, token_id: uuid.UUID, *, conn: Conn | None = None) -> str:
        """Revoke a live token; returns its hash (for cache invalidation)."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE api_tokens SET deleted_at = now() "
                "WHERE id = %s AND deleted_at IS NULL RETURNING token_hash",
                (token_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"token {token_id} does not exist or is already revoked")
        return str(row[0])

    async def revoke_for_node(self, node_id: uuid.UUID, *, conn: Conn | None = None) -> list[str]:
        """Revoke every live token bound to ``node_id``; returns their hashes."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE api_tokens SET deleted_at = now() "
                "WHERE node_id = %s AND deleted_at IS NULL RETURNING token_hash",
                (node_id,),
            )
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def count_live(self, *, scope: Scope | None = None, conn: Conn | None = None) -> int:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT count(*) FROM api_tokens WHERE deleted_at IS NULL "
                "AND (%(scope)s::text IS NULL OR scope = %(scope)s::text)",
                {"scope": None if scope is None else scope.value},
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])
