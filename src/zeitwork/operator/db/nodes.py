"""Nodes: registration (idempotent on hostname or id), state changes (compare-and-set),
heartbeats, the down/ready detector's queries, and soft deletion.

Placement (the other side of ``instances``) must lock the chosen node row
(``SELECT ... FROM nodes WHERE id = ... AND deleted_at IS NULL FOR UPDATE``) in the same
transaction as the instance insert; ``delete`` takes the same lock, so an instance can never
land on a node that is being deleted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.core.states import NodeState, check_transition
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of


@dataclass(frozen=True, slots=True)
class Node:
    id: uuid.UUID
    hostname: str
    ip_address: str
    region_id: uuid.UUID | None
    state: NodeState
    state_changed_at: datetime
    runtime: str | None
    vcpu_millis: int
    memory_mib: int
    disk_mib: int
    heartbeat: dict[str, Any] | None
    last_heartbeat_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What a registration declares."""

    hostname: str
    ip_address: str
    vcpu_millis: int
    memory_mib: int
    disk_mib: int = 0
    region_id: uuid.UUID | None = None
    runtime: str | None = None
    id: uuid.UUID | None = None


COLUMNS = (
    "id, hostname, ip_address, region_id, state, state_changed_at, runtime, vcpu_millis, "
    "memory_mib, disk_mib, heartbeat, last_heartbeat_at, created_at, updated_at, deleted_at"
)


def _node(row: dict[str, Any]) -> Node:
    values = {name: row[name] for name in Node.__dataclass_fields__}
    values["state"] = NodeState(row["state"])
    return Node(**values)


_STATE_ATTEMPTS = 5


class NodeStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def get(self, node_id: uuid.UUID, *, conn: Conn | None = None) -> Node:
        # binary results: the hot single-row read parses uuids and timestamps faster
        async with (
            self._db.connection(conn) as c,
            c.cursor(row_factory=dict_row, binary=True) as cur,
        ):
            await cur.execute(
                f"SELECT {COLUMNS} FROM nodes WHERE id = %s AND deleted_at IS NULL", (node_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"node {node_id} does not exist")
        return _node(row)

    async def list_page(
        self, page: PageRequest, *, state: NodeState | None = None, conn: Conn | None = None
    ) -> Page[Node]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {COLUMNS} FROM nodes WHERE deleted_at IS NULL "
                "AND (%(state)s::text IS NULL OR state = %(state)s::text)" + PAGE_SQL,
                {"state": None if state is None else state.value} | page.params(),
            )
            rows = await cur.fetchall()
        return page_of([_node(r) for r in rows], page)

    async def upsert(self, spec: NodeSpec, *, conn: Conn | None = None) -> tuple[Node, bool]:
        """Register ``spec``; returns the node and whether it was created.

        Idempotent: an existing live node with the same ``id`` (when given) or hostname is
        updated (address, region, runtime, resources) and returned. Concurrent registrations
        of one hostname give one row (the unique index arbitrates).
        """
        params = {
            "id": spec.id,
            "hostname": spec.hostname,
            "ip": spec.ip_address,
            "region": spec.region_id,
            "runtime": spec.runtime,
            "vcpu": spec.vcpu_millis,
            "mem": spec.memory_mib,
            "disk": spec.disk_mib,
        }
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            if spec.id is not None:
                await cur.execute(
                    "UPDATE nodes SET hostname = %(hostname)s, ip_address = %(ip)s, "
                    "region_id = coalesce(%(region)s, region_id), "
                    "runtime = coalesce(%(runtime)s, runtime), vcpu_millis = %(vcpu)s, "
                    "memory_mib = %(mem)s, disk_mib = %(disk)s "
                    f"WHERE id = %(id)s AND deleted_at IS NULL RETURNING {COLUMNS}",
                    params,
                )
                row = await cur.fetchone()
                if row is not None:
                    self._refuse_terminated(row)
                    return _node(row), False
            await cur.execute(
                "INSERT INTO nodes (id, hostname, ip_address, region_id, runtime, vcpu_millis, "
                "memory_mib, disk_mib) VALUES (coalesce(%(id)s, gen_random_uuid()), "
                "%(hostname)s, %(ip)s, %(region)s, %(runtime)s, %(vcpu)s, %(mem)s, %(disk)s) "
                "ON CONFLICT (hostname) WHERE deleted_at IS NULL DO UPDATE SET "
                "ip_address = EXCLUDED.ip_address, "
                "region_id = coalesce(EXCLUDED.region_id, nodes.region_id), "
                "runtime = coalesce(EXCLUDED.runtime, nodes.runtime), "
                "vcpu_millis = EXCLUDED.vcpu_millis, memory_mib = EXCLUDED.memory_mib, "
                "disk_mib = EXCLUDED.disk_mib "
                f"RETURNING {COLUMNS}, (xmax = 0) AS created",
                params,
            )
            row = await cur.fetchone()
            assert row is not None
            # refusals raise inside the transaction, so the upsert above is rolled back
            if spec.id is not None and row["id"] != spec.id:
                raise Conflict(
                    f"hostname {spec.hostname!r} is already registered as node {row['id']}",
                    extra={"node_id": str(row["id"])},
                )
            if not row["created"]:
                self._refuse_terminated(row)
        return _node(row), bool(row["created"])

    @staticmethod
    def _refuse_terminated(row: dict[str, Any]) -> None:
        if row["state"] == NodeState.TERMINATED.value:
            raise Conflict(
                f"node {row['id']} is terminated; delete it before registering it again",
                extra={"node_id": str(row["id"])},
            )

    async def set_state(
        self,
        node_id: uuid.UUID,
        target: NodeState,
        *,
        expected: NodeState | None = None,
        conn: Conn | None = None,
    ) -> Node:
        """Move a node to ``target`` if the transition table allows it (compare-and-set).

        With ``expected`` the change happens only from that state (else Conflict); without it
        the current state is read and the update retried if someone else changed it first.
        """
        for _ in range(_STATE_ATTEMPTS):
            current = (
                expected if expected is not None else (await self.get(node_id, conn=conn)).state
            )
            check_transition(current, target)
            async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "UPDATE nodes SET state = %(target)s, state_changed_at = CASE "
                    "WHEN state = %(target)s THEN state_changed_at ELSE now() END "
                    "WHERE id = %(id)s AND state = %(current)s AND deleted_at IS NULL "
                    f"RETURNING {COLUMNS}",
                    {"id": node_id, "target": target.value, "current": current.value},
                )
                row = await cur.fetchone()
            if row is not None:
                return _node(row)
            if expected is not None:
                actual = await self.get(node_id, conn=conn)
                raise Conflict(
                    f"node {node_id} is {actual.state.value!r}, not {expected.value!r}",
                    extra={"state": actual.state.value},
                )
        raise Conflict(f"node {node_id} changed state concurrently; retry")

    async def record_heartbeat(
        self,
        node_id: uuid.UUID,
        report: dict[str, Any],
        *,
        runtime: str | None = None,
        conn: Conn | None = None,
    ) -> Node:
        """Store a heartbeat's report and time; a node that was booting, down or unknown
        becomes ready (a draining, error or terminated node keeps its state)."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE nodes SET heartbeat = %(report)s, last_heartbeat_at = now(), "
                "runtime = coalesce(%(runtime)s, runtime), "
                "state = CASE WHEN state IN ('booting', 'down', 'unknown') THEN 'ready' "
                "ELSE state END, "
                "state_changed_at = CASE WHEN state IN ('booting', 'down', 'unknown') "
                "THEN now() ELSE state_changed_at END "
                f"WHERE id = %(id)s AND deleted_at IS NULL RETURNING {COLUMNS}",
                {"id": node_id, "report": Jsonb(report), "runtime": runtime},
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"node {node_id} does not exist")
        return _node(row)

    async def mark_silent_down(
        self, timeout_seconds: float, *, conn: Conn | None = None
    ) -> list[uuid.UUID]:
        """Nodes (booting, ready, draining, unknown) whose last heartbeat (or, without one,
        their last state change) is older than the timeout go ``down``; returns their ids."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE nodes SET state = 'down', state_changed_at = now() "
                "WHERE deleted_at IS NULL AND state IN ('booting', 'ready', 'draining', 'unknown') "
                "AND coalesce(last_heartbeat_at, state_changed_at) "
                "< now() - make_interval(secs => %s) RETURNING id",
                (timeout_seconds,),
            )
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def mark_alive_ready(
        self, timeout_seconds: float, *, conn: Conn | None = None
    ) -> list[uuid.UUID]:
        """Down nodes that heartbeat again within the timeout become ``ready``."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE nodes SET state = 'ready', state_changed_at = now() "
                "WHERE deleted_at IS NULL AND state = 'down' "
                "AND last_heartbeat_at >= now() - make_interval(secs => %s) "
                "AND last_heartbeat_at > state_changed_at RETURNING id",
                (timeout_seconds,),
            )
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def delete(self, node_id: uuid.UUID, *, conn: Conn | None = None) -> list[str]:
        """Soft-delete a node (state terminated) and revoke its tokens (returns their hashes,
        for the token cache); Conflict while it has instances that are not terminated."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "SELECT state FROM nodes WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (node_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"node {node_id} does not exist")
            cur = await c.execute(
                "SELECT count(*) FROM instances WHERE node_id = %s AND state <> 'terminated' "
                "AND deleted_at IS NULL",
                (node_id,),
            )
            counted = await cur.fetchone()
            remaining = 0 if counted is None else int(counted[0])
            if remaining:
                raise Conflict(
                    f"node {node_id} still has {remaining} instance(s) that are not terminated",
                    extra={"instances": remaining},
                )
            await c.execute(
                "UPDATE nodes SET deleted_at = now(), state = 'terminated', "
                "state_changed_at = now() WHERE id = %s",
                (node_id,),
            )
            cur = await c.execute(
                "UPDATE api_tokens SET deleted_at = now() WHERE node_id = %s "
                "AND deleted_at IS NULL RETURNING token_hash",
                (node_id,),
            )
            return [str(r[0]) for r in await cur.fetchall()]
