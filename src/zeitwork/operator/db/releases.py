"""Apps' environments, releases and rollouts.

A release is immutable once inserted apart from its state (compare-and-set through
``set_release_state``). Versions are numbered per environment inside the deploy's
transaction, which holds the environment's row lock (``environment(..., lock=True)``), so
two deploys to one environment are serialised and never take the same number. Secrets are
stored as the ``SecretBox``'s ciphertexts, and never read back by the API.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.core.states import ReleaseState, RolloutState, check_transition
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.instances import COLUMNS as INSTANCE_COLUMNS
from zeitwork.operator.db.instances import Instance, instance_of


@dataclass(frozen=True, slots=True)
class Environment:
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    current_release_id: uuid.UUID | None
    replicas: int


@dataclass(frozen=True, slots=True)
class Release:
    id: uuid.UUID
    project_id: uuid.UUID
    project_environment_id: uuid.UUID
    version: int
    image_id: uuid.UUID
    image_digest: str | None
    image_ref: str | None
    command: list[str] | None
    port: int
    env: dict[str, str]
    secrets: dict[str, str]
    """name -> ciphertext"""
    vcpu_millis: int
    memory_mib: int
    replicas: int
    health_check: dict[str, Any]
    restart_policy: str
    strategy: dict[str, Any]
    reason: str
    description: str | None
    created_by: str | None
    source_release_id: uuid.UUID | None
    state: ReleaseState
    state_changed_at: datetime
    error: str | None
    created_at: datetime
    backend_protocol: str = "http1"
    """``http1`` or ``h2c``: how the proxies speak to its instances (migration 0015)"""
    response_idle_timeout: float | None = None
    """seconds; None: the load balancers' own (migration 0017, as the two below)"""
    tunnel_idle_timeout: float | None = None
    max_tunnels: int | None = None


@dataclass(frozen=True, slots=True)
class NewRelease:
    """What a deploy, rollback or config change inserts (the version is the next one)."""

    project_id: uuid.UUID
    project_environment_id: uuid.UUID
    image_id: uuid.UUID
    image_digest: str | None
    image_ref: str | None
    command: list[str] | None
    port: int
    env: dict[str, str]
    secrets: dict[str, str]
    vcpu_millis: int
    memory_mib: int
    replicas: int
    health_check: dict[str, Any]
    restart_policy: str
    strategy: dict[str, Any]
    reason: str
    description: str | None = None
    created_by: str | None = None
    source_release_id: uuid.UUID | None = None
    backend_protocol: str = "http1"
    response_idle_timeout: float | None = None
    tunnel_idle_timeout: float | None = None
    max_tunnels: int | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    id: uuid.UUID
    release_id: uuid.UUID
    from_release_id: uuid.UUID | None
    project_environment_id: uuid.UUID
    strategy: str
    state: RolloutState
    state_changed_at: datetime
    deadline_at: datetime
    finished_at: datetime | None
    error: str | None
    created_at: datetime


_ENV_COLUMNS = "id, project_id, name, current_release_id, replicas"
_REL_COLUMNS = (
    "id, project_id, project_environment_id, version, image_id, image_digest, image_ref, "
    "command, port, env, secrets, vcpu_millis, memory_mib, replicas, health_check, "
    "restart_policy, strategy, reason, description, created_by, source_release_id, state, "
    "state_changed_at, error, created_at, backend_protocol, response_idle_timeout, "
    "tunnel_idle_timeout, max_tunnels"
)
_RO_COLUMNS = (
    "id, release_id, from_release_id, project_environment_id, strategy, state, "
    "state_changed_at, deadline_at, finished_at, error, created_at"
)


def _release(row: dict[str, Any]) -> Release:
    return Release(**(row | {"state": ReleaseState(row["state"])}))


def _rollout(row: dict[str, Any]) -> Rollout:
    return Rollout(**(row | {"state": RolloutState(row["state"])}))


async def _one(c: Conn, sql: str, params: Any) -> dict[str, Any] | None:
    async with c.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def _all(c: Conn, sql: str, params: Any) -> list[dict[str, Any]]:
    async with c.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


class ReleaseStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    # -- environments --------------------------------------------------------------------

    async def environment(
        self,
        project_id: uuid.UUID,
        name: str,
        *,
        create: bool = False,
        lock: bool = False,
        conn: Conn | None = None,
    ) -> Environment:
        """The project's live environment ``name`` (made when ``create``; NotFound else);
        with ``lock`` its row stays locked until the caller's transaction ends."""
        suffix = " FOR UPDATE" if lock else ""
        async with self._db.transaction(conn) as c:
            sql = (
                f"SELECT {_ENV_COLUMNS} FROM project_environments WHERE project_id = %s "
                "AND name = %s AND deleted_at IS NULL" + suffix
            )
            row = await _one(c, sql, (project_id, name))
            if row is None and create:
                await c.execute(
                    "INSERT INTO project_environments (project_id, name) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (project_id, name),
                )
                row = await _one(c, sql, (project_id, name))
        if row is None:
            raise NotFound(f"environment {name!r} does not exist")
        return Environment(**row)

    async def environment_by_id(
        self, environment_id: uuid.UUID, *, lock: bool = False, conn: Conn | None = None
    ) -> Environment:
        suffix = " FOR UPDATE" if lock else ""
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_ENV_COLUMNS} FROM project_environments WHERE id = %s "
                "AND deleted_at IS NULL" + suffix,
                (environment_id,),
            )
        if row is None:
            raise NotFound(f"environment {environment_id} does not exist")
        return Environment(**row)

    async def set_replicas(
        self, environment_id: uuid.UUID, replicas: int, *, conn: Conn | None = None
    ) -> None:
        async with self._db.connection(conn) as c:
            await c.execute(
                "UPDATE project_environments SET replicas = %s WHERE id = %s",
                (replicas, environment_id),
            )

    async def set_current(
        self,
        environment_id: uuid.UUID,
        release_id: uuid.UUID,
        *,
        expected: uuid.UUID | None,
        conn: Conn | None = None,
    ) -> None:
        """Compare-and-set of the current release (Conflict when it moved meanwhile)."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE project_environments SET current_release_id = %s WHERE id = %s "
                "AND current_release_id IS NOT DISTINCT FROM %s",
                (release_id, environment_id, expected),
            )
            if cur.rowcount != 1:
                raise Conflict(f"the current release of environment {environment_id} moved")

    async def live_environments(self, *, conn: Conn | None = None) -> list[uuid.UUID]:
        """Environments with a current release or a running rollout (what the releases
        reconciler looks at)."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT e.id FROM project_environments e WHERE e.deleted_at IS NULL AND "
                "(e.current_release_id IS NOT NULL OR EXISTS (SELECT 1 FROM rollouts o "
                "WHERE o.project_environment_id = e.id AND o.state = 'running' "
                "AND o.deleted_at IS NULL)) ORDER BY e.id"
            )
            return [r[0] for r in await cur.fetchall()]

    async def instances_of(
        self, environment_id: uuid.UUID, *, conn: Conn | None = None
    ) -> list[Instance]:
        """The environment's instances that are not terminated, oldest first."""
        columns = ", ".join(f"i.{c.strip()}" for c in INSTANCE_COLUMNS.split(","))
        async with self._db.connection(conn) as c:
            rows = await _all(
                c,
                f"SELECT {columns} FROM instances i JOIN releases r ON r.id = i.release_id "
                "WHERE r.project_environment_id = %s AND i.state <> 'terminated' "
                "ORDER BY i.created_at, i.id",
                (environment_id,),
            )
        return [instance_of(r) for r in rows]

    async def domains_of(self, environment_id: uuid.UUID, *, conn: Conn | None = None) -> list[str]:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT name FROM domains WHERE project_environment_id = %s "
                "AND deleted_at IS NULL ORDER BY name",
                (environment_id,),
            )
            return [r[0] for r in await cur.fetchall()]

    # -- releases ------------------------------------------------------------------------

    async def create(self, new: NewRelease, *, state: ReleaseState, conn: Conn) -> Release:
        """Insert with the environment's next version; hold its row lock first."""
        row = await _one(
            conn,
            "INSERT INTO releases (project_id, project_environment_id, version, image_id, "
            "image_digest, image_ref, command, port, env, secrets, vcpu_millis, memory_mib, "
            "replicas, health_check, restart_policy, strategy, reason, description, "
            "created_by, source_release_id, state, backend_protocol, response_idle_timeout, "
            "tunnel_idle_timeout, max_tunnels) "
            "SELECT %(project)s, %(env_id)s, coalesce(max(version), 0) + 1, %(image)s, "
            "%(digest)s, %(ref)s, %(command)s, %(port)s, %(env)s, %(secrets)s, %(vcpu)s, "
            "%(mem)s, %(replicas)s, %(check)s, %(restart)s, %(strategy)s, %(reason)s, "
            "%(description)s, %(by)s, %(source)s, %(state)s, %(protocol)s, "
            "%(response_idle)s, %(tunnel_idle)s, %(max_tunnels)s "
            "FROM releases WHERE project_environment_id = %(env_id)s "
            f"RETURNING {_REL_COLUMNS}",
            {
                "project": new.project_id,
                "env_id": new.project_environment_id,
                "image": new.image_id,
                "digest": new.image_digest,
                "ref": new.image_ref,
                "command": None if new.command is None else Jsonb(new.command),
                "port": new.port,
                "env": Jsonb(new.env),
                "secrets": Jsonb(new.secrets),
                "vcpu": new.vcpu_millis,
                "mem": new.memory_mib,
                "replicas": new.replicas,
                "check": Jsonb(new.health_check),
                "restart": new.restart_policy,
                "strategy": Jsonb(new.strategy),
                "reason": new.reason,
                "description": new.description,
                "by": new.created_by,
                "source": new.source_release_id,
                "state": state.value,
                "protocol": new.backend_protocol,
                "response_idle": new.response_idle_timeout,
                "tunnel_idle": new.tunnel_idle_timeout,
                "max_tunnels": new.max_tunnels,
            },
        )
        assert row is not None  # INSERT ... SELECT of an aggregate always gives one row
        return _release(row)

    async def get(self, release_id: uuid.UUID, *, conn: Conn | None = None) -> Release:
        async with self._db.connection(conn) as c:
            row = await _one(c, f"SELECT {_REL_COLUMNS} FROM releases WHERE id = %s", (release_id,))
        if row is None:
            raise NotFound(f"release {release_id} does not exist")
        return _release(row)

    async def by_version(
        self, environment_id: uuid.UUID, version: int, *, conn: Conn | None = None
    ) -> Release:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_REL_COLUMNS} FROM releases WHERE project_environment_id = %s "
                "AND version = %s AND deleted_at IS NULL",
                (environment_id, version),
            )
        if row is None:
            raise NotFound(f"release v{version} does not exist")
        return _release(row)

    async def history(
        self,
        environment_id: uuid.UUID,
        *,
        limit: int = 50,
        before: int | None = None,
        conn: Conn | None = None,
    ) -> list[Release]:
        """Newest first; ``before``: only versions below it (the next page)."""
        async with self._db.connection(conn) as c:
            rows = await _all(
                c,
                f"SELECT {_REL_COLUMNS} FROM releases WHERE project_environment_id = %s "
                "AND deleted_at IS NULL AND (%s::int IS NULL OR version < %s::int) "
                "ORDER BY version DESC LIMIT %s",
                (environment_id, before, before, limit),
            )
        return [_release(r) for r in rows]

    async def previous_good(
        self, environment_id: uuid.UUID, *, below: int, conn: Conn | None = None
    ) -> Release | None:
        """The newest release under version ``below`` that served as current (its rollout
        succeeded, or it was carried over as serving) and did not fail."""
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_REL_COLUMNS} FROM releases r WHERE project_environment_id = %s "
                "AND deleted_at IS NULL AND version < %s AND state IN ('active', 'superseded') "
                "AND (reason = 'migration' OR EXISTS (SELECT 1 FROM rollouts o "
                "WHERE o.release_id = r.id AND o.state = 'succeeded')) "
                "ORDER BY version DESC LIMIT 1",
                (environment_id, below),
            )
        return None if row is None else _release(row)

    async def set_release_state(
        self,
        release_id: uuid.UUID,
        expected: ReleaseState,
        target: ReleaseState,
        *,
        error: str | None = None,
        conn: Conn | None = None,
    ) -> bool:
        """Compare-and-set; False when the release was not in ``expected``."""
        check_transition(expected, target)
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE releases SET state = %s, state_changed_at = now(), "
                "error = coalesce(%s, error) WHERE id = %s AND state = %s",
                (target.value, error, release_id, expected.value),
            )
            return cur.rowcount == 1

    # -- rollouts ------------------------------------------------------------------------

    async def start_rollout(
        self,
        *,
        release: Release,
        from_release_id: uuid.UUID | None,
        strategy: str,
        deadline_seconds: float,
        conn: Conn,
    ) -> Rollout:
        row = await _one(
            conn,
            "INSERT INTO rollouts (release_id, from_release_id, project_environment_id, "
            "strategy, deadline_at) VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) "
            f"RETURNING {_RO_COLUMNS}",
            (
                release.id,
                from_release_id,
                release.project_environment_id,
                strategy,
                deadline_seconds,
            ),
        )
        assert row is not None
        return _rollout(row)

    async def running_rollout(
        self, environment_id: uuid.UUID, *, conn: Conn | None = None
    ) -> Rollout | None:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_RO_COLUMNS} FROM rollouts WHERE project_environment_id = %s "
                "AND state = 'running' AND deleted_at IS NULL",
                (environment_id,),
            )
        return None if row is None else _rollout(row)

    async def rollout_of(
        self, release_id: uuid.UUID, *, conn: Conn | None = None
    ) -> Rollout | None:
        """The release's newest rollout."""
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_RO_COLUMNS} FROM rollouts WHERE release_id = %s "
                "ORDER BY created_at DESC LIMIT 1",
                (release_id,),
            )
        return None if row is None else _rollout(row)

    async def finish_rollout(
        self,
        rollout_id: uuid.UUID,
        target: RolloutState,
        *,
        error: str | None = None,
        conn: Conn | None = None,
    ) -> bool:
        """Compare-and-set ``running -> target``; False when it was not running."""
        check_transition(RolloutState.RUNNING, target)
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE rollouts SET state = %s, state_changed_at = now(), finished_at = now(), "
                "error = %s WHERE id = %s AND state = 'running'",
                (target.value, error, rollout_id),
            )
            return cur.rowcount == 1
