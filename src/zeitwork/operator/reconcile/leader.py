"""The leader lock: one operator at a time runs the reconcilers.

A PostgreSQL session advisory lock held by one pooled connection for the length of a pass
(``hold``). Several operators on one database each try it per pass; the one that gets it
acts, the others skip that pass. A killed operator's connection closes and PostgreSQL
releases its lock at once, so another operator (or its restart) takes over on its next pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from zeitwork.operator.db.database import Database

LEADER_LOCK_KEY = 0x7A77_4C44  # "zwLD"


class LeaderLock:
    def __init__(self, *, db: Database, key: int = LEADER_LOCK_KEY) -> None:
        self._db = db
        self._key = key

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[bool]:
        """Yield True while this process holds the lock (False: another one does)."""
        async with self._db.connection() as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
            row = await cur.fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
