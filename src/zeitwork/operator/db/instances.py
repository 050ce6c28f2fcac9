"""Instances: placement (atomic capacity accounting), state reports (compare-and-set with
their side effects), termination, and the per-node assignment list.

Capacity: ``nodes.allocated_vcpu_millis`` / ``allocated_memory_mib`` count what every
instance that is not ``terminated`` reserves on its node. ``try_place`` reserves and inserts
in ONE statement: a conditional ``UPDATE nodes ... WHERE allocated + request <= capacity``
on a row taken ``FOR UPDATE SKIP LOCKED`` (a racing placement moves on to its next
candidate instead of queueing), the ``INSERT`` of the instance, the bump of the node's
assignments version and the ``NOTIFY``. PostgreSQL re-evaluates the condition on the
latest row version under the lock, so two placements can never both take the last slot.
The reservation is released in the transaction that moves the instance to ``terminated``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from zeitwork.core.resources import Resources
from zeitwork.core.states import (
    INSTANCE_TRANSITIONS,
    HealthState,
    InstanceState,
    check_transition,
)
from zeitwork.operator.db import changes, instance_events
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, PageRequest
from zeitwork.operator.scheduler.placement import NodeCandidate
from zeitwork.wire.admin import DesiredState
from zeitwork.wire.agent import RestartPolicy


@dataclass(frozen=True, slots=True)
class Instance:
    id: uuid.UUID
    node_id: uuid.UUID | None
    image_id: uuid.UUID
    deployment_id: uuid.UUID | None
    state: InstanceState
    desired_state: DesiredState
    state_changed_at: datetime
    vcpu_millis: int
    memory_mib: int
    disk_mib: int
    default_port: int
    environment_variables: dict[str, str]
    restart_policy: RestartPolicy
    ip_address: str | None
    port: int | None
    exit_code: int | None
    oom_killed: bool
    reason: str | None
    log_tail: list[str]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    lost_at: datetime | None = None
    """Set when the instance was lost with its node (its reservation is released then)."""
    replaced_by: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    health: HealthState = HealthState.UNKNOWN
    health_detail: dict[str, Any] | None = None
    """The agent's last check (``HealthResult`` as JSON)."""
    healthy_since: datetime | None = None
    serving: bool = False
    """In the route (listed while also running and healthy)."""
    drain_started_at: datetime | None = None
    command: list[str] | None = None
    health_check: dict[str, Any] | None = None
    stop_timeout: float = 10.0

    def spec(self) -> InstanceRequest:
        """What a replacement of this instance needs."""
        return InstanceRequest(
            image_id=self.image_id,
            vcpu_millis=self.vcpu_millis,
            memory_mib=self.memory_mib,
            default_port=self.default_port,
            environment_variables=self.environment_variables,
            deployment_id=self.deployment_id,
            restart_policy=self.restart_policy,
            release_id=self.release_id,
            command=self.command,
            health_check=self.health_check,
            stop_timeout=self.stop_timeout,
        )


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    """What a new instance needs (the node is chosen by the scheduler or the caller)."""

    image_id: uuid.UUID
    vcpu_millis: int
    memory_mib: int
    default_port: int
    environment_variables: dict[str, str]
    deployment_id: uuid.UUID | None = None
    restart_policy: str = "always"
    release_id: uuid.UUID | None = None
    command: list[str] | None = None
    health_check: dict[str, Any] | None = None
    stop_timeout: float = 10.0

    @property
    def resources(self) -> Resources:
        return Resources(millicpu=self.vcpu_millis, memory_mib=self.memory_mib)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A state report (from the instance's agent, or an admin)."""

    state: InstanceState
    ip_address: str | None = None
    port: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None
    log_tail: tuple[str, ...] = ()
    health: HealthState | None = None
    """None: the report says nothing of health (the stored health stays)."""
    health_detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AssignedRow:
    instance: Instance
    image_name: str
    image_digest: str | None
    image_size: int | None
    secrets: dict[str, str] | None = None
    """The instance's release's secrets, as stored (ciphertexts)."""


COLUMNS = (
    "id, node_id, image_id, deployment_id, state, desired_state, state_changed_at, "
    "vcpu_millis, memory_mib, disk_mib, default_port, environment_variables, restart_policy, "
    "ip_address, port, exit_code, oom_killed, reason, log_tail, created_at, updated_at, "
    "deleted_at, lost_at, replaced_by, release_id, health, health_detail, healthy_since, "
    "serving, drain_started_at, command, health_check, stop_timeout"
)
_I_COLUMNS = ", ".join(f"i.{c.strip()}" for c in COLUMNS.split(","))
_LOG_LINE_MAX = 1000


def reachable(current: InstanceState, target: InstanceState) -> bool:
    """Whether ``target`` can be reached from ``current`` through the transition table."""
    seen = {current}
    frontier = [current]
    while frontier:
        state = frontier.pop()
        if state == target:
            return True
        for nxt in INSTANCE_TRANSITIONS[state] - seen:
            seen.add(nxt)
            frontier.append(nxt)
    return False


def health_after(current: Instance, update: StatusUpdate) -> HealthState:
    """The health stored after ``update``: what the agent reported, and never healthy for
    an instance that is not running (a restart starts from unknown)."""
    if update.state is not InstanceState.RUNNING:
        return HealthState.UNKNOWN
    return update.health if update.health is not None else current.health


def routable(instance: Instance) -> bool:
    """Whether the route table lists the instance (for a domain bound to an environment;
    its node's state aside): in the route, running and healthy, not being removed."""
    return (
        instance.serving
        and instance.state is InstanceState.RUNNING
        and instance.health is HealthState.HEALTHY
        and instance.deleted_at is None
    )


def _seen(instance: Instance) -> instance_events.InstanceFacts:
    return instance_events.InstanceFacts(
        state=instance.state,
        health=instance.health,
        exit_code=instance.exit_code,
        oom_killed=instance.oom_killed,
        reason=instance.reason,
        health_detail=instance.health_detail,
    )


def instance_of(row: dict[str, Any]) -> Instance:
    """An ``instances`` row (all of ``COLUMNS``) as an Instance."""
    values = {name: row[name] for name in Instance.__dataclass_fields__}
    values["state"] = InstanceState(row["state"])
    values["health"] = HealthState(row["health"])
    return Instance(**values)


_instance = instance_of


def _candidate(row: dict[str, Any]) -> NodeCandidate:
    return NodeCandidate(
        node_id=row["id"],
        capacity=Resources(millicpu=row["vcpu_millis"], memory_mib=row["memory_mib"]),
        allocated=Resources(
            millicpu=row["allocated_vcpu_millis"], memory_mib=row["allocated_memory_mib"]
        ),
        replicas=int(row.get("replicas") or 0),
    )


_CANDIDATE_COLUMNS = (
    "n.id, n.vcpu_millis, n.memory_mib, n.allocated_vcpu_millis, n.allocated_memory_mib"
)

# One statement = one round trip and one commit: reserve, insert, bump, notify.
_PLACE_SQL = f"""
WITH node AS (
    UPDATE nodes SET allocated_vcpu_millis = allocated_vcpu_millis + %(vcpu)s,
                     allocated_memory_mib = allocated_memory_mib + %(mem)s
    WHERE id = (SELECT id FROM nodes WHERE id = %(node)s AND deleted_at IS NULL
                AND state = 'ready' FOR UPDATE {{lock}})
      AND state = 'ready' AND deleted_at IS NULL
      AND allocated_vcpu_millis + %(vcpu)s <= vcpu_millis
      AND allocated_memory_mib + %(mem)s <= memory_mib
      AND EXISTS (SELECT 1 FROM images WHERE id = %(image)s AND status = 'ready'
                  AND deleted_at IS NULL)
    RETURNING id
), inst AS (
    INSERT INTO instances (node_id, image_id, deployment_id, vcpu_millis, memory_mib,
                           default_port, environment_variables, restart_policy, release_id,
                           command, health_check, stop_timeout)
    SELECT node.id, %(image)s, %(deployment)s, %(vcpu)s, %(mem)s, %(port)s, %(env)s,
           %(restart)s, %(release)s, %(command)s, %(check)s, %(stop)s FROM node
    RETURNING {COLUMNS}
), link AS (
    INSERT INTO deployment_instances (deployment_id, instance_id)
    SELECT deployment_id, id FROM inst WHERE deployment_id IS NOT NULL
), version AS (
    INSERT INTO change_versions (topic, version)
    SELECT 'assignments:' || node_id::text, 1 FROM inst
    ON CONFLICT (topic) DO UPDATE SET version = change_versions.version + 1
    RETURNING topic, version
)
SELECT inst.*, (SELECT pg_notify('{changes.CHANNEL}', topic || ' ' || version)
                FROM version) AS notified
FROM inst
"""
_TIME = "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_LIST_JSON_SQL = (
    "WITH page AS (SELECT * FROM instances WHERE (%(deleted)s OR deleted_at IS NULL) "
    "AND (%(state)s::text IS NULL OR state = %(state)s::text) "
    "AND (%(node)s::uuid IS NULL OR node_id = %(node)s::uuid) "
    "AND (%(dep)s::uuid IS NULL OR deployment_id = %(dep)s::uuid)" + PAGE_SQL + "), "
    "shown AS (SELECT * FROM page ORDER BY id LIMIT %(limit)s) "
    "SELECT coalesce(json_agg(json_build_object("
    "'id', id, 'node_id', node_id, 'image_id', image_id, 'deployment_id', deployment_id, "
    "'state', state, 'desired_state', desired_state, "
    f"'state_changed_at', {_TIME.format('state_changed_at')}, "
    "'resources', json_build_object('vcpu', vcpu_millis::float8 / 1000, 'memory', memory_mib), "
    "'default_port', default_port, 'restart_policy', restart_policy, "
    "'ip_address', ip_address, 'port', port, 'exit_code', exit_code, "
    "'oom_killed', oom_killed, 'reason', reason, 'log_tail', log_tail, "
    "'environment_variable_names', (SELECT coalesce(json_agg(k ORDER BY k COLLATE \"C\"), "
    "'[]'::json) FROM jsonb_object_keys(environment_variables) AS k), "
    "'environment_variables', NULL, "
    f"'created_at', {_TIME.format('created_at')}, "
    f"'updated_at', {_TIME.format('updated_at')}, "
    f"'deleted_at', {_TIME.format('deleted_at')}"
    ") ORDER BY id), '[]'::json)::text, "
    "(SELECT count(*) FROM page), (SELECT max(id::text)::uuid FROM shown) FROM shown"
)

_PLACE_SKIP = _PLACE_SQL.format(lock="SKIP LOCKED")
_PLACE_WAIT = _PLACE_SQL.format(lock="")


class InstanceStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def get(self, instance_id: uuid.UUID, *, conn: Conn | None = None) -> Instance:
        """The instance, also while it is soft-deleted (terminating or terminated)."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {COLUMNS} FROM instances WHERE id = %s", (instance_id,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"instance {instance_id} does not exist")
        return _instance(row)

    async def list_page_json(
        self,
        page: PageRequest,
        *,
        state: InstanceState | None = None,
        node_id: uuid.UUID | None = None,
        deployment_id: uuid.UUID | None = None,
        include_deleted: bool = False,
        conn: Conn | None = None,
    ) -> tuple[bytes, uuid.UUID | None]:
        """The page as the API's JSON array (``wire.admin.InstanceOut`` without
        secret values), built by PostgreSQL, and the cursor of the next page (if any).

        A 100-row page is the hot path of instance listing; building its JSON in the
        database saves turning every row into Python objects and back. A test compares
        each element with the single-instance answer built in Python.
        """
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                _LIST_JSON_SQL,
                {
                    "deleted": include_deleted,
                    "state": None if state is None else state.value,
                    "node": node_id,
                    "dep": deployment_id,
                    "limit": page.limit,
                }
                | page.params(),
            )
            row = await cur.fetchone()
        assert row is not None
        body, fetched, last = row
        more = int(fetched) > page.limit
        return str(body).encode(), (last if more else None)

    async def check_image_ready(self, image_id: uuid.UUID, *, conn: Conn | None = None) -> None:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT status FROM images WHERE id = %s AND deleted_at IS NULL", (image_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise InvalidInput(
                f"image {image_id} does not exist",
                extra={"errors": [{"field": "image_id", "message": "no such image"}]},
            )
        if row[0] != "ready":
            raise InvalidInput(f"image {image_id} is {row[0]}, not ready")

    async def candidates(
        self,
        request: Resources,
        *,
        deployment_id: uuid.UUID | None = None,
        release_id: uuid.UUID | None = None,
        feasible_only: bool = True,
        limit: int | None = 32,
        conn: Conn | None = None,
    ) -> list[NodeCandidate]:
        """Ready nodes (with enough free capacity when ``feasible_only``), tightest first;
        with ``release_id`` (else ``deployment_id``) each carries how many of its replicas
        it already runs (live ones)."""
        if release_id is not None:
            replicas = (
                "(SELECT count(*) FROM instances i WHERE i.node_id = n.id "
                "AND i.release_id = %(rel)s AND i.state <> 'terminated' "
                "AND i.desired_state = 'running')"
            )
        elif deployment_id is not None:
            replicas = (
                "(SELECT count(*) FROM instances i WHERE i.node_id = n.id "
                "AND i.deployment_id = %(dep)s AND i.state <> 'terminated')"
            )
        else:
            replicas = "0"
        where = "n.state = 'ready' AND n.deleted_at IS NULL"
        if feasible_only:
            where += (
                " AND n.vcpu_millis - n.allocated_vcpu_millis >= %(vcpu)s"
                " AND n.memory_mib - n.allocated_memory_mib >= %(mem)s"
            )
        sql = (
            f"SELECT {_CANDIDATE_COLUMNS}, {replicas} AS replicas FROM nodes n WHERE {where} "
            "ORDER BY (n.vcpu_millis - n.allocated_vcpu_millis), "
            "(n.memory_mib - n.allocated_memory_mib)"
        )
        if limit is not None:
            sql += " LIMIT %(limit)s"
        params = {
            "vcpu": request.millicpu,
            "mem": request.memory_mib,
            "dep": deployment_id,
            "rel": release_id,
            "limit": limit,
        }
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            rows = await cur.fetchall()
        return [_candidate(r) for r in rows]

    async def node_candidate(
        self, node_id: uuid.UUID, *, conn: Conn | None = None
    ) -> NodeCandidate:
        """One node's capacity (NotFound if it does not exist)."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_CANDIDATE_COLUMNS}, n.state FROM nodes n "
                "WHERE n.id = %s AND n.deleted_at IS NULL",
                (node_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"node {node_id} does not exist")
        return _candidate(row)

    async def try_place(
        self,
        node_id: uuid.UUID,
        spec: InstanceRequest,
        *,
        wait_for_lock: bool = False,
        conn: Conn | None = None,
    ) -> Instance | None:
        """Reserve ``spec`` on ``node_id`` and insert the instance, or None when the node
        is not ready, lacks the capacity, the image is not ready, or (without
        ``wait_for_lock``) the node is locked by a concurrent placement."""
        params = {
            "node": node_id,
            "vcpu": spec.vcpu_millis,
            "mem": spec.memory_mib,
            "image": spec.image_id,
            "deployment": spec.deployment_id,
            "port": spec.default_port,
            "env": Jsonb(spec.environment_variables),
            "restart": spec.restart_policy,
            "release": spec.release_id,
            "command": None if spec.command is None else Jsonb(spec.command),
            "check": None if spec.health_check is None else Jsonb(spec.health_check),
            "stop": spec.stop_timeout,
        }
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(_PLACE_WAIT if wait_for_lock else _PLACE_SKIP, params)
            row = await cur.fetchone()
        return None if row is None else _instance(row)

    async def report(
        self,
        instance_id: uuid.UUID,
        update: StatusUpdate,
        *,
        node_id: uuid.UUID | None = None,
        lenient: bool = False,
        conn: Conn | None = None,
    ) -> Instance:
        """Apply a state report under the row lock (compare-and-set by construction).

        ``lenient`` (heartbeat reconciliation) accepts any state reachable through the
        transition table (reports in between were lost), never leaving ``terminated``.

        With ``node_id`` the instance must be on that node (else PermissionDenied).
        Reaching ``terminated`` releases the node's reservation and drops the instance
        from the node's assignments; any change to or from ``running`` (or of a running
        instance's address) bumps the route table.
        """
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM instances WHERE id = %s FOR UPDATE", (instance_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"instance {instance_id} does not exist")
            if node_id is not None and row["node_id"] != node_id:
                raise PermissionDenied("a node token may only report instances of its own node")
            current = _instance(row)
            if current.lost_at is not None and update.state not in (
                current.state,
                InstanceState.TERMINATED,
            ):
                raise Conflict(
                    f"instance {instance_id} was lost with its node (it is {current.state.value} "
                    "and to be terminated); only 'terminated' is accepted",
                    extra={"state": current.state.value},
                )
            if lenient:
                if not reachable(current.state, update.state):
                    check_transition(current.state, update.state)  # raises
            else:
                check_transition(current.state, update.state)
            log_tail = [line[:_LOG_LINE_MAX] for line in update.log_tail[-50:]]
            await cur.execute(
                "UPDATE instances SET state = %(state)s, "
                "state_changed_at = CASE WHEN state = %(state)s THEN state_changed_at "
                "ELSE now() END, "
                "ip_address = coalesce(%(ip)s, ip_address), port = coalesce(%(port)s, port), "
                "exit_code = %(exit)s, oom_killed = %(oom)s, reason = %(reason)s, "
                "log_tail = CASE WHEN %(has_log)s THEN %(log)s ELSE log_tail END, "
                "health = %(health)s, "
                "health_detail = CASE WHEN %(has_detail)s THEN %(detail)s "
                "ELSE health_detail END, "
                "healthy_since = CASE WHEN %(health)s <> 'healthy' THEN NULL "
                "WHEN health = 'healthy' THEN coalesce(healthy_since, now()) ELSE now() END "
                f"WHERE id = %(id)s RETURNING {COLUMNS}",
                {
                    "id": instance_id,
                    "state": update.state.value,
                    "ip": update.ip_address,
                    "port": update.port,
                    "exit": update.exit_code,
                    "oom": update.oom_killed,
                    "reason": update.reason,
                    "has_log": bool(log_tail),
                    "log": Jsonb(log_tail),
                    "health": health_after(current, update).value,
                    "has_detail": update.health_detail is not None,
                    "detail": Jsonb(update.health_detail),
                },
            )
            updated_row = await cur.fetchone()
            assert updated_row is not None
            updated = _instance(updated_row)
            released = (
                update.state is InstanceState.TERMINATED
                and current.state is not InstanceState.TERMINATED
                and current.lost_at is None  # a lost instance's reservation went with it
            )
            if released and current.node_id is not None:
                await cur.execute(
                    "UPDATE nodes SET "
                    "allocated_vcpu_millis = greatest(0, allocated_vcpu_millis - %s), "
                    "allocated_memory_mib = greatest(0, allocated_memory_mib - %s) "
                    "WHERE id = %s",
                    (current.vcpu_millis, current.memory_mib, current.node_id),
                )
                await changes.bump(c, changes.assignments_topic(current.node_id))
            running = InstanceState.RUNNING
            address_moved = (updated.ip_address, updated.port) != (
                current.ip_address,
                current.port,
            )
            if (
                (current.state is running) != (updated.state is running)
                or (updated.state is running and address_moved)
                or routable(current) != routable(updated)
            ):
                await changes.bump(c, changes.ROUTES)
            if updated.release_id is not None and (
                current.state is not updated.state or current.health is not updated.health
            ):
                await changes.bump(c, changes.RELEASES)
            await instance_events.record_change(
                c,
                _seen(current),
                _seen(updated),
                instance_id=updated.id,
                node_id=updated.node_id,
                release_id=updated.release_id,
            )
        return updated

    async def states_on(
        self, node_id: uuid.UUID, *, conn: Conn | None = None
    ) -> dict[uuid.UUID, tuple[InstanceState, str | None, int | None, HealthState]]:
        """(state, ip_address, port, health) of every instance on the node that is not
        terminated."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT id, state, ip_address, port, health FROM instances "
                "WHERE node_id = %s AND state <> 'terminated'",
                (node_id,),
            )
            rows = await cur.fetchall()
        return {r[0]: (InstanceState(r[1]), r[2], r[3], HealthState(r[4])) for r in rows}

    async def terminate(self, instance_id: uuid.UUID, *, conn: Conn | None = None) -> Instance:
        """Mark for termination: desired ``terminated`` and soft-deleted; its node's agent
        sees it in its assignments, stops it and reports ``terminated`` (which frees the
        capacity)."""
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM instances WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (instance_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"instance {instance_id} does not exist")
            current = _instance(row)
            await cur.execute(
                "UPDATE instances SET desired_state = 'terminated', deleted_at = now() "
                f"WHERE id = %s RETURNING {COLUMNS}",
                (instance_id,),
            )
            done = await cur.fetchone()
            assert done is not None
            if current.node_id is not None:
                await changes.bump(c, changes.assignments_topic(current.node_id))
            if current.state is InstanceState.RUNNING:
                await changes.bump(c, changes.ROUTES)
        return _instance(done)

    async def mark_lost(
        self, node_id: uuid.UUID, *, reason: str, conn: Conn | None = None
    ) -> list[Instance]:
        """Every instance of the node that is neither terminated nor lost becomes lost:
        ``failed`` with ``reason``, desired ``terminated``, soft-deleted, ``lost_at`` set;
        their reservation is released and the node's assignments and the routes bumped, in
        one transaction. The node's agent, if it ever comes back, stops and removes them."""
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE instances SET state = 'failed', state_changed_at = now(), "
                "desired_state = 'terminated', deleted_at = coalesce(deleted_at, now()), "
                "lost_at = now(), reason = %(reason)s "
                "WHERE node_id = %(node)s AND state <> 'terminated' AND lost_at IS NULL "
                f"RETURNING {COLUMNS}",
                {"node": node_id, "reason": reason},
            )
            lost = [_instance(r) for r in await cur.fetchall()]
            if not lost:
                return []
            await cur.execute(
                "UPDATE nodes SET "
                "allocated_vcpu_millis = greatest(0, allocated_vcpu_millis - %s), "
                "allocated_memory_mib = greatest(0, allocated_memory_mib - %s) WHERE id = %s",
                (sum(i.vcpu_millis for i in lost), sum(i.memory_mib for i in lost), node_id),
            )
            await changes.bump(c, changes.assignments_topic(node_id))
            await changes.bump(c, changes.ROUTES)
        return lost

    async def unreplaced(self, *, limit: int = 100, conn: Conn | None = None) -> list[Instance]:
        """Lost instances of live deployments without a replacement yet (oldest first; a
        release's instances are the releases reconciler's to replace),
        locked for this transaction (SKIP LOCKED: another pass may hold some)."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_I_COLUMNS} FROM instances i JOIN deployments d "
                "ON d.id = i.deployment_id AND d.deleted_at IS NULL "
                "WHERE i.lost_at IS NOT NULL AND i.replaced_by IS NULL "
                "AND i.deployment_id IS NOT NULL AND i.release_id IS NULL "
                "ORDER BY i.lost_at, i.id LIMIT %s "
                "FOR UPDATE OF i SKIP LOCKED",
                (limit,),
            )
            return [_instance(r) for r in await cur.fetchall()]

    async def set_replaced_by(
        self, instance_id: uuid.UUID, replacement: uuid.UUID, *, conn: Conn | None = None
    ) -> None:
        async with self._db.connection(conn) as c:
            await c.execute(
                "UPDATE instances SET replaced_by = %s WHERE id = %s", (replacement, instance_id)
            )

    async def node_uses_image(
        self, node_id: uuid.UUID, image_id: uuid.UUID, *, conn: Conn | None = None
    ) -> bool:
        """Whether an instance assigned to ``node_id`` (one ``assignments`` lists: not
        terminated) runs ``image_id``."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT EXISTS (SELECT 1 FROM instances WHERE node_id = %s AND image_id = %s "
                "AND state <> 'terminated')",
                (node_id, image_id),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    async def assignments(
        self, node_id: uuid.UUID, *, conn: Conn | None = None
    ) -> tuple[int, list[AssignedRow]]:
        """The node's assignments version and every instance on it that is not terminated,
        read in one snapshot (a repeatable-read transaction)."""
        async with self._db.connection(conn) as c, c.transaction():
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = await changes.version(c, changes.assignments_topic(node_id))
            async with c.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {_I_COLUMNS}, m.name AS image_name, m.digest AS image_digest, "
                    "m.size AS image_size, r.secrets AS secrets "
                    "FROM instances i JOIN images m ON m.id = i.image_id "
                    "LEFT JOIN releases r ON r.id = i.release_id "
                    "WHERE i.node_id = %s AND i.state <> 'terminated' ORDER BY i.id",
                    (node_id,),
                )
                rows = await cur.fetchall()
        return version, [
            AssignedRow(
                instance=_instance(r),
                image_name=r["image_name"],
                image_digest=r["image_digest"],
                image_size=r["image_size"],
                secrets=r["secrets"] or None,
            )
            for r in rows
        ]
