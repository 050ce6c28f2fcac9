"""Build jobs, their logs, uploaded contexts and webhook deliveries.

The queue's rules, all in SQL here:

- ``lease``: in one transaction, the oldest runnable job (``queued``, or ``running`` with an
  expired lease) is locked with ``FOR NO KEY UPDATE SKIP LOCKED`` (two builders never wait
  on, or take, the same job; a foreign key check's ``KEY SHARE`` on it, a webhook delivery
  or a log chunk naming it, does not make it skipped); its project's row is then locked
  and the project's running jobs with a live lease counted, so the per-project limit
  (``projects.build_concurrency``) holds even when two builders lease at once. A taken job
  gets a new ``lease_token``.
- Every builder call that changes a job (renew, log, resolve, finish) compares the
  ``lease_token`` and the ``running`` state: a builder whose lease expired and was taken
  again by another gets nothing (``None``), so a job is finished exactly once. A lease
  past its expiry that nobody took is still its holder's.
- An expired job that already ran ``max_attempts`` times, or whose cancel was asked,
  is failed (or cancelled) instead of leased again.
- ``build_logs`` holds at most ``log_cap`` bytes per build: the oldest chunks go.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import NotFound
from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database
from zeitwork.wire.builds import BuildState

BUILDS = "builds"
"""The change topic bumped with every change of a build (state, logs): wakes log followers
and idle builders' long-polls."""

COLUMNS = (
    "b.id, b.project_id, b.project_environment_id, b.state, b.reason, b.created_by, "
    "b.source_kind, b.git_url, b.git_ref, b.git_commit, b.git_path, b.context_sha256, "
    "b.dockerfile, b.build_args, b.stack, b.port, b.cache_key, b.reused_build_id, b.image_id, "
    "b.release_id, b.error, b.failed_step, b.lease_owner, b.lease_token, b.lease_expires_at, "
    "b.attempts, b.builder_version, b.cancel_requested_at, b.log_size, b.log_truncated, "
    "b.queued_at, b.started_at, b.finished_at, b.durations, b.created_at, b.updated_at, "
    "p.slug AS project_slug, e.name AS environment, "
    "(SELECT r.version FROM releases r WHERE r.id = b.release_id) AS release_version"
)
_FROM = (
    "builds b JOIN projects p ON p.id = b.project_id "
    "JOIN project_environments e ON e.id = b.project_environment_id"
)


@dataclass(frozen=True, slots=True)
class Build:
    id: uuid.UUID
    project_id: uuid.UUID
    project_environment_id: uuid.UUID
    state: BuildState
    reason: str
    created_by: str | None
    source_kind: str
    git_url: str | None
    git_ref: str | None
    git_commit: str | None
    git_path: str | None
    context_sha256: str | None
    dockerfile: str | None
    build_args: dict[str, str]
    stack: str | None
    port: int | None
    cache_key: str | None
    reused_build_id: uuid.UUID | None
    image_id: uuid.UUID | None
    release_id: uuid.UUID | None
    error: str | None
    failed_step: str | None
    lease_owner: str | None
    lease_token: uuid.UUID | None = field(repr=False)
    lease_expires_at: datetime | None
    attempts: int
    builder_version: str | None
    cancel_requested_at: datetime | None
    log_size: int
    log_truncated: bool
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    durations: dict[str, float]
    created_at: datetime
    updated_at: datetime
    project_slug: str
    environment: str
    release_version: int | None = None


@dataclass(frozen=True, slots=True)
class NewBuild:
    project_id: uuid.UUID
    project_environment_id: uuid.UUID
    source_kind: str
    reason: str = "deploy"
    created_by: str | None = None
    git_url: str | None = None
    git_ref: str | None = None
    git_commit: str | None = None
    git_path: str | None = None
    context_sha256: str | None = None
    dockerfile: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    cache_key: str | None = None


@dataclass(frozen=True, slots=True)
class LogChunk:
    seq: int
    created_at: datetime
    data: str


@dataclass(frozen=True, slots=True)
class BuildContext:
    sha256: str
    size: int
    path: str
    created_at: datetime


def build_of(row: dict[str, Any]) -> Build:
    return Build(**{**row, "state": BuildState(row["state"])})


class BuildStore:
    def __init__(self, *, db: Database, log_cap: int = 1024 * 1024, max_attempts: int = 3) -> None:
        self._db = db
        self._log_cap = log_cap
        self._max_attempts = max_attempts

    async def _fetch(self, c: Conn, where: str, params: Any) -> Build | None:
        async with c.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {COLUMNS} FROM {_FROM} WHERE {where}", params)
            row = await cur.fetchone()
        return None if row is None else build_of(row)

    async def _returning(self, c: Conn, update: str, params: Any) -> Build | None:
        """Run ``UPDATE builds b SET ... WHERE ... RETURNING b.id`` and read the row back."""
        cur = await c.execute(update + " RETURNING b.id", params)
        row = await cur.fetchone()
        if row is None:
            return None
        await changes.bump(c, BUILDS)
        return await self._fetch(c, "b.id = %s", (row[0],))

    # -- create, read ----------------------------------------------------------------------

    async def insert(self, new: NewBuild, *, conn: Conn | None = None) -> Build:
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "INSERT INTO builds (project_id, project_environment_id, source_kind, reason, "
                "created_by, git_url, git_ref, git_commit, git_path, context_sha256, dockerfile, "
                "build_args, port, cache_key) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    new.project_id,
                    new.project_environment_id,
                    new.source_kind,
                    new.reason,
                    new.created_by,
                    new.git_url,
                    new.git_ref,
                    new.git_commit,
                    new.git_path,
                    new.context_sha256,
                    new.dockerfile,
                    Jsonb(new.build_args),
                    new.port,
                    new.cache_key,
                ),
            )
            row = await cur.fetchone()
            assert row is not None  # INSERT ... RETURNING always returns the row
            await changes.bump(c, BUILDS)
            build = await self._fetch(c, "b.id = %s", (row[0],))
        assert build is not None
        return build

    async def get(self, build_id: uuid.UUID, *, conn: Conn | None = None) -> Build:
        async with self._db.connection(conn) as c:
            build = await self._fetch(c, "b.id = %s AND b.deleted_at IS NULL", (build_id,))
        if build is None:
            raise NotFound(f"build {build_id} does not exist")
        return build

    async def recent(
        self,
        *,
        project_id: uuid.UUID | None = None,
        state: BuildState | None = None,
        limit: int = 50,
        before: datetime | None = None,
        conn: Conn | None = None,
    ) -> list[Build]:
        """Newest first."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM {_FROM} WHERE b.deleted_at IS NULL "
                "AND (%(project)s::uuid IS NULL OR b.project_id = %(project)s::uuid) "
                "AND (%(state)s::text IS NULL OR b.state = %(state)s::text) "
                "AND (%(before)s::timestamptz IS NULL OR b.created_at < %(before)s) "
                "ORDER BY b.created_at DESC, b.id DESC LIMIT %(limit)s",
                {
                    "project": project_id,
                    "state": None if state is None else state.value,
                    "before": before,
                    "limit": limit,
                },
            )
            rows = await cur.fetchall()
        return [build_of(r) for r in rows]

    async def succeeded_with_key(
        self, cache_key: str, *, project_id: uuid.UUID, conn: Conn | None = None
    ) -> Build | None:
        """The newest successful build of the project with this cache key whose image is
        still there (ready)."""
        async with self._db.connection(conn) as c:
            return await self._fetch(
                c,
                "b.cache_key = %s AND b.project_id = %s AND b.state = 'succeeded' "
                "AND b.deleted_at IS NULL AND b.image_id IS NOT NULL AND EXISTS ("
                "SELECT 1 FROM images i WHERE i.id = b.image_id AND i.status = 'ready' "
                "AND i.deleted_at IS NULL) ORDER BY b.finished_at DESC LIMIT 1",
                (cache_key, project_id),
            )

    # -- the queue ---------------------------------------------------------------------------

    async def supersede_queued(self, newer: Build, *, conn: Conn | None = None) -> list[uuid.UUID]:
        """Cancel the older queued builds of ``newer``'s project, environment and ref (for
        uploaded contexts: of its project and environment); returns their ids."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "UPDATE builds SET state = 'cancelled', finished_at = now(), "
                "error = %s WHERE project_id = %s AND project_environment_id = %s "
                "AND state = 'queued' AND id <> %s AND created_at <= %s AND deleted_at IS NULL "
                "AND source_kind = %s AND git_ref IS NOT DISTINCT FROM %s "
                "AND git_path IS NOT DISTINCT FROM %s RETURNING id",
                (
                    f"superseded by the newer build {newer.id}",
                    newer.project_id,
                    newer.project_environment_id,
                    newer.id,
                    newer.created_at,
                    newer.source_kind,
                    newer.git_ref,
                    newer.git_path,
                ),
            )
            ids = [r[0] for r in await cur.fetchall()]
            if ids:
                await changes.bump(c, BUILDS)
        return ids

    async def expire_exhausted(self, *, conn: Conn | None = None) -> list[Build]:
        """Running jobs whose lease expired and that may not run again: those whose cancel
        was asked become ``cancelled``, those that ran ``max_attempts`` times ``failed``."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "UPDATE builds SET finished_at = now(), lease_expires_at = NULL, "
                "lease_token = NULL, "
                "state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' "
                "ELSE 'failed' END, "
                "error = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE "
                "format('the builder running it stopped answering %%s times (lease expired)', "
                "attempts) END "
                "WHERE state = 'running' AND lease_expires_at < now() AND deleted_at IS NULL "
                "AND (cancel_requested_at IS NOT NULL OR attempts >= %s) RETURNING id",
                (self._max_attempts,),
            )
            ids = [r[0] for r in await cur.fetchall()]
            if ids:
                await changes.bump(c, BUILDS)
            return [b for b in [await self._fetch(c, "b.id = %s", (i,)) for i in ids] if b]

    async def lease(
        self, *, owner: str, builder_version: str, seconds: float, conn: Conn | None = None
    ) -> Build | None:
        """Take the oldest runnable job within its project's limit (see the module doc)."""
        async with self._db.transaction(conn) as c:
            skipped: list[uuid.UUID] = []  # projects at their limit (or decided by another)
            while True:
                cur = await c.execute(
                    "SELECT id, project_id FROM builds WHERE deleted_at IS NULL AND "
                    "(state = 'queued' OR (state = 'running' AND lease_expires_at < now())) "
                    "AND project_id <> ALL(%s) ORDER BY queued_at, id LIMIT 1 "
                    # NO KEY UPDATE: a foreign key check's KEY SHARE (a webhook delivery
                    # or a log chunk naming the build) must not make the lease skip it
                    "FOR NO KEY UPDATE SKIP LOCKED",
                    (skipped,),
                )
                candidate = await cur.fetchone()
                if candidate is None:
                    return None
                build_id, project_id = candidate
                # serialise leases per project (the count below then sees the other's
                # commit); a project another builder is deciding on is skipped, not waited
                # for (no lock-order deadlock between two builders)
                lock = await c.execute(
                    "SELECT build_concurrency FROM projects WHERE id = %s "
                    "FOR NO KEY UPDATE SKIP LOCKED",
                    (project_id,),
                )
                limit_row = await lock.fetchone()
                if limit_row is None:
                    skipped.append(project_id)
                    continue
                running = await c.execute(
                    "SELECT count(*) FROM builds WHERE project_id = %s AND state = 'running' "
                    "AND lease_expires_at >= now() AND id <> %s AND deleted_at IS NULL",
                    (project_id, build_id),
                )
                count_row = await running.fetchone()
                if count_row is not None and int(count_row[0]) >= int(limit_row[0]):
                    skipped.append(project_id)
                    continue
                return await self._returning(
                    c,
                    "UPDATE builds b SET state = 'running', lease_owner = %s, "
                    "lease_token = gen_random_uuid(), "
                    "lease_expires_at = now() + make_interval(secs => %s), "
                    "attempts = attempts + 1, builder_version = %s, "
                    "started_at = coalesce(started_at, now()) WHERE b.id = %s",
                    (owner, seconds, builder_version or None, build_id),
                )

    async def renew(
        self, build_id: uuid.UUID, token: uuid.UUID, *, seconds: float, conn: Conn | None = None
    ) -> Build | None:
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "UPDATE builds SET lease_expires_at = now() + make_interval(secs => %s) "
                "WHERE id = %s AND lease_token = %s AND state = 'running' RETURNING id",
                (seconds, build_id, token),
            )
            if await cur.fetchone() is None:
                return None
            return await self._fetch(c, "b.id = %s", (build_id,))

    async def give_up(
        self, build_id: uuid.UUID, token: uuid.UUID, *, conn: Conn | None = None
    ) -> Build | None:
        """The holder hands the job back (it stops): queued again at once, this attempt
        not counted."""
        async with self._db.transaction(conn) as c:
            return await self._returning(
                c,
                "UPDATE builds b SET state = 'queued', lease_token = NULL, "
                "lease_expires_at = NULL, lease_owner = NULL, "
                "attempts = greatest(b.attempts - 1, 0) "
                "WHERE b.id = %s AND b.lease_token = %s AND b.state = 'running'",
                (build_id, token),
            )

    async def resolved(
        self,
        build_id: uuid.UUID,
        token: uuid.UUID,
        *,
        git_commit: str | None,
        cache_key: str,
        conn: Conn | None = None,
    ) -> Build | None:
        async with self._db.transaction(conn) as c:
            return await self._returning(
                c,
                "UPDATE builds b SET git_commit = coalesce(%s, git_commit), cache_key = %s "
                "WHERE b.id = %s AND b.lease_token = %s AND b.state = 'running'",
                (git_commit, cache_key, build_id, token),
            )

    async def finish(
        self,
        build_id: uuid.UUID,
        token: uuid.UUID | None,
        *,
        state: BuildState,
        image_id: uuid.UUID | None = None,
        git_commit: str | None = None,
        stack: str | None = None,
        port: int | None = None,
        error: str | None = None,
        failed_step: str | None = None,
        durations: dict[str, float] | None = None,
        reused_build_id: uuid.UUID | None = None,
        conn: Conn | None = None,
    ) -> Build | None:
        """Compare-and-set ``running`` (with ``token``; or ``queued`` when ``token`` is
        None: a build finished without a builder) to a final state; None when the lease or
        state did not match."""
        held = (
            "b.state = 'queued'"
            if token is None
            else "b.lease_token = %(token)s AND b.state = 'running'"
        )
        async with self._db.transaction(conn) as c:
            return await self._returning(
                c,
                "UPDATE builds b SET state = %(state)s, finished_at = now(), "
                "lease_expires_at = NULL, image_id = coalesce(%(image)s, b.image_id), "
                "git_commit = coalesce(%(commit)s, b.git_commit), "
                "stack = coalesce(%(stack)s, b.stack), port = coalesce(%(port)s, b.port), "
                "error = %(error)s, failed_step = %(step)s, "
                "durations = b.durations || %(durations)s, "
                "reused_build_id = coalesce(%(reused)s, b.reused_build_id), "
                "started_at = coalesce(b.started_at, now()) "
                f"WHERE b.id = %(id)s AND {held}",
                {
                    "state": state.value,
                    "image": image_id,
                    "commit": git_commit,
                    "stack": stack,
                    "port": port,
                    "error": error,
                    "step": failed_step,
                    "durations": Jsonb(durations or {}),
                    "reused": reused_build_id,
                    "id": build_id,
                    "token": token,
                },
            )

    async def set_release(
        self,
        build_id: uuid.UUID,
        *,
        release_id: uuid.UUID | None,
        error: str | None = None,
        conn: Conn | None = None,
    ) -> Build | None:
        async with self._db.transaction(conn) as c:
            return await self._returning(
                c,
                "UPDATE builds b SET release_id = %s, error = coalesce(%s, b.error) "
                "WHERE b.id = %s",
                (release_id, error, build_id),
            )

    async def cancel(self, build_id: uuid.UUID, *, conn: Conn | None = None) -> Build:
        """A queued build is cancelled at once; a running one gets ``cancel_requested_at``
        (its builder stops it and finishes it ``cancelled``); a finished one is unchanged."""
        async with self._db.transaction(conn) as c:
            await self._returning(
                c,
                "UPDATE builds b SET "
                "state = CASE WHEN b.state = 'queued' THEN 'cancelled' ELSE b.state END, "
                "finished_at = CASE WHEN b.state = 'queued' THEN now() ELSE b.finished_at END, "
                "error = CASE WHEN b.state = 'queued' THEN 'cancelled' ELSE b.error END, "
                "cancel_requested_at = coalesce(b.cancel_requested_at, now()) "
                "WHERE b.id = %s AND b.state IN ('queued', 'running') AND b.deleted_at IS NULL",
                (build_id,),
            )
            return await self.get(build_id, conn=c)

    # -- logs --------------------------------------------------------------------------------

    async def append_log(
        self, build_id: uuid.UUID, token: uuid.UUID, data: str, *, conn: Conn | None = None
    ) -> Build | None:
        """Append a chunk under the lease; keep the newest ``log_cap`` bytes."""
        size = len(data.encode())
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "UPDATE builds SET log_size = log_size + %s WHERE id = %s AND lease_token = %s "
                "AND state = 'running' RETURNING log_size",
                (size, build_id, token),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await c.execute(
                "INSERT INTO build_logs (build_id, data) VALUES (%s, %s)", (build_id, data)
            )
            if int(row[0]) > self._log_cap:
                await self._trim(c, build_id)
            await changes.bump(c, BUILDS)
            return await self._fetch(c, "b.id = %s", (build_id,))

    async def _trim(self, c: Conn, build_id: uuid.UUID) -> None:
        # delete the oldest chunks beyond the newest log_cap bytes
        await c.execute(
            "DELETE FROM build_logs WHERE build_id = %(id)s AND seq IN ("
            "SELECT seq FROM (SELECT seq, sum(octet_length(data)) OVER (ORDER BY seq DESC) AS "
            "kept FROM build_logs WHERE build_id = %(id)s) t WHERE kept > %(cap)s)",
            {"id": build_id, "cap": self._log_cap},
        )
        await c.execute(
            "UPDATE builds SET log_truncated = true, log_size = (SELECT coalesce("
            "sum(octet_length(data)), 0) FROM build_logs WHERE build_id = %(id)s) "
            "WHERE id = %(id)s",
            {"id": build_id},
        )

    async def logs_after(
        self, build_id: uuid.UUID, after: int, *, limit: int = 1000, conn: Conn | None = None
    ) -> list[LogChunk]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT seq, created_at, data FROM build_logs WHERE build_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (build_id, after, limit),
            )
            rows = await cur.fetchall()
        return [LogChunk(**r) for r in rows]

    # -- contexts ----------------------------------------------------------------------------

    async def context(self, sha256: str, *, conn: Conn | None = None) -> BuildContext | None:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT sha256, size, path, created_at FROM build_contexts "
                "WHERE sha256 = %s AND deleted_at IS NULL",
                (sha256,),
            )
            row = await cur.fetchone()
        return None if row is None else BuildContext(**row)

    async def add_context(
        self, sha256: str, *, size: int, path: str, conn: Conn | None = None
    ) -> tuple[BuildContext, bool]:
        """(the context, created?): an existing one is kept and touched."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "INSERT INTO build_contexts (sha256, size, path) VALUES (%s, %s, %s) "
                "ON CONFLICT (sha256) DO UPDATE SET last_used_at = now() "
                "RETURNING (xmax = 0)",
                (sha256, size, path),
            )
            row = await cur.fetchone()
            created = bool(row and row[0])
            found = await self.context(sha256, conn=c)
        assert found is not None
        return found, created

    # -- webhook deliveries ------------------------------------------------------------------

    async def record_delivery(
        self,
        delivery_id: str,
        project_id: uuid.UUID | None,
        *,
        event: str | None = None,
        conn: Conn | None = None,
    ) -> bool:
        """True the first time a delivery id is seen, False for a redelivery."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "INSERT INTO webhook_deliveries (delivery_id, project_id, event) "
                "VALUES (%s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
                (delivery_id, project_id, event),
            )
            return await cur.fetchone() is not None

    async def delivery_built(
        self, delivery_id: str, build_id: uuid.UUID, *, conn: Conn | None = None
    ) -> None:
        async with self._db.connection(conn) as c:
            await c.execute(
                "UPDATE webhook_deliveries SET build_id = %s WHERE delivery_id = %s",
                (build_id, delivery_id),
            )

    # -- project settings --------------------------------------------------------------------

    async def project_secrets(
        self, project_id: uuid.UUID, *, conn: Conn | None = None
    ) -> tuple[str | None, str | None]:
        """(webhook_secret, git_token) ciphertexts."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT webhook_secret, git_token FROM projects WHERE id = %s", (project_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"project {project_id} does not exist")
        return row[0], row[1]

    async def set_project_secret(
        self,
        project_id: uuid.UUID,
        column: str,
        ciphertext: str | None,
        *,
        conn: Conn | None = None,
    ) -> None:
        if column not in ("webhook_secret", "git_token"):
            raise ValueError(column)
        async with self._db.connection(conn) as c:
            await c.execute(
                f"UPDATE projects SET {column} = %s WHERE id = %s", (ciphertext, project_id)
            )
