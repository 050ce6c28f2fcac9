"""Issuing and revoking tokens, and the first-start admin token."""

from __future__ import annotations

import uuid
from pathlib import Path

import structlog

from zeitwork.core.files import atomic_write_text
from zeitwork.operator.auth import Authenticator, display_prefix, hash_token, new_secret
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.tokens import Token, TokenStore
from zeitwork.operator.principal import Scope

log = structlog.get_logger("zeitwork.operator.tokens")

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 (a file name)


class TokenService:
    def __init__(self, *, db: Database, tokens: TokenStore, auth: Authenticator) -> None:
        self._db = db
        self._tokens = tokens
        self._auth = auth

    async def issue(
        self,
        scope: Scope,
        *,
        name: str = "",
        node_id: uuid.UUID | None = None,
        expires_in: float | None = None,
        conn: Conn | None = None,
    ) -> tuple[Token, str]:
        """Create a token; returns it and its secret (shown once, never stored)."""
        secret = new_secret()
        token = await self._tokens.insert(
            token_hash=hash_token(secret),
            prefix=display_prefix(secret),
            scope=scope,
            name=name,
            node_id=node_id,
            expires_in=expires_in,
            conn=conn,
        )
        log.info("token.created", token_id=str(token.id), scope=scope.value, node_id=node_id)
        return token, secret

    async def revoke(self, token_id: uuid.UUID) -> None:
        digest = await self._tokens.revoke(token_id)
        self._auth.forget([digest])
        log.info("token.revoked", token_id=str(token_id))

    async def ensure_admin_token(self, data_dir: Path) -> Path | None:
        """On a first start (no live admin token), create one and write it to
        ``data_dir/admin-token`` (mode 0600); returns that path, or None if one existed."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('zeitwork.admin-token'))")
            if await self._tokens.count_live(scope=Scope.ADMIN, conn=conn):
                return None
            _token, secret = await self.issue(Scope.ADMIN, name="bootstrap", conn=conn)
            path = data_dir / ADMIN_TOKEN_FILE
            write_secret_file(path, secret)
        log.info("token.admin_token_written", path=str(path))
        return path


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by the owner only (0600), atomically."""
    atomic_write_text(path, secret + "\n", mode=0o600)
