"""Nodes: registration (idempotent on hostname or id), state changes (compare-and-set),
heartbeats, the down/ready detector's queries, and soft deletion.

Placement (the other side of ``instances``) must lock the chosen node row
(``SELECT ... FROM nodes WHERE id = ... AND deleted_at IS NULL FOR UPDATE``) in the same
transaction as the instance insert; ``delete`` takes the same lock, so an instance can never
land on a node that is being deleted.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.core.states import NodeState, check_transition, node_state_after_outage
from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of
from zeitwork.operator.scheduler.subnets import SubnetPool, first_free, overlapping


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
    subnet: str | None = None


@dataclass(frozen=True, slots=True)
class NodePeer:
    """Another serving node: its instance subnet and its address (the next hop)."""

    node_id: uuid.UUID
    subnet: str
    ip_address: str


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """Where and with which credential the operator calls a node's agent (logs fan-in)."""

    node_id: uuid.UUID
    hostname: str
    url: str | None
    token: str | None = field(repr=False)  # a secret: never in a repr, a log or a response


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
    subnet: str | None = None
    agent_url: str | None = None
    agent_token: str | None = None  # a secret: stored, never returned by the API nor logged


COLUMNS = (
    "id, hostname, ip_address, region_id, state, state_changed_at, runtime, vcpu_millis, "
    "memory_mib, disk_mib, heartbeat, last_heartbeat_at, created_at, updated_at, deleted_at, "
    "subnet::text AS subnet"
)
SERVING = "('ready', 'draining')"
# the state a down node returns to when heartbeats resume, per the transition table
_BACK_FROM_DOWN = (
    "CASE WHEN state_before_down = 'draining' "
    f"THEN '{node_state_after_outage(NodeState.DRAINING).value}' "
    f"ELSE '{node_state_after_outage(None).value}' END"
)
"""Node states whose instances serve and whose subnets other nodes route to (SQL list)."""
# one lock for every subnet allocation (transaction-scoped): allocations are rare, and this
# makes "read the taken subnets, pick a free one, write it" atomic across operators
_SUBNET_LOCK = 0x7A77_5355


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
            "agent_url": spec.agent_url,
            "agent_token": spec.agent_token,
        }
        async with self._db.transaction(conn) as c, c.cursor(row_factory=dict_row) as cur:
            if spec.id is not None:
                await cur.execute(
                    "UPDATE nodes SET hostname = %(hostname)s, ip_address = %(ip)s, "
                    "region_id = coalesce(%(region)s, region_id), "
                    "runtime = coalesce(%(runtime)s, runtime), vcpu_millis = %(vcpu)s, "
                    "memory_mib = %(mem)s, disk_mib = %(disk)s, "
                    "agent_url = %(agent_url)s, agent_token = %(agent_token)s "
                    f"WHERE id = %(id)s AND deleted_at IS NULL RETURNING {COLUMNS}",
                    params,
                )
                row = await cur.fetchone()
                if row is not None:
                    self._refuse_terminated(row)
                    return _node(row), False
            await cur.execute(
                "INSERT INTO nodes (id, hostname, ip_address, region_id, runtime, vcpu_millis, "
                "memory_mib, disk_mib, agent_url, agent_token) "
                "VALUES (coalesce(%(id)s, gen_random_uuid()), %(hostname)s, %(ip)s, "
                "%(region)s, %(runtime)s, %(vcpu)s, %(mem)s, %(disk)s, %(agent_url)s, "
                "%(agent_token)s) "
                "ON CONFLICT (hostname) WHERE deleted_at IS NULL DO UPDATE SET "
                "ip_address = EXCLUDED.ip_address, "
                "region_id = coalesce(EXCLUDED.region_id, nodes.region_id), "
                "runtime = coalesce(EXCLUDED.runtime, nodes.runtime), "
                "vcpu_millis = EXCLUDED.vcpu_millis, memory_mib = EXCLUDED.memory_mib, "
                "disk_mib = EXCLUDED.disk_mib, agent_url = EXCLUDED.agent_url, "
                "agent_token = EXCLUDED.agent_token "
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
                    "WHEN state = %(target)s THEN state_changed_at ELSE now() END, "
                    "state_before_down = CASE WHEN %(target)s <> 'down' THEN NULL "
                    "WHEN state IN ('ready', 'draining') THEN state "
                    "ELSE state_before_down END "
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
        """Store a heartbeat's report and time; a node that was booting or unknown becomes
        ready, a down node returns to the state it went down from (``draining`` stays
        draining, else ready); a draining, error or terminated node keeps its state."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE nodes SET heartbeat = %(report)s, last_heartbeat_at = now(), "
                "runtime = coalesce(%(runtime)s, runtime), "
                "state = CASE WHEN state IN ('booting', 'unknown') THEN 'ready' "
                f"WHEN state = 'down' THEN {_BACK_FROM_DOWN} ELSE state END, "
                "state_before_down = CASE WHEN state = 'down' THEN NULL "
                "ELSE state_before_down END, "
                "state_changed_at = CASE WHEN state IN ('booting', 'down', 'unknown') "
                "THEN now() ELSE state_changed_at END "
                f"WHERE id = %(id)s AND deleted_at IS NULL RETURNING {COLUMNS}",
                {"id": node_id, "report": Jsonb(report), "runtime": runtime},
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"node {node_id} does not exist")
        return _node(row)

    async def is_live(
        self, node_id: uuid.UUID, timeout_seconds: float, *, conn: Conn | None = None
    ) -> bool:
        """Whether the node looks alive: not down/unknown/error (nor terminated) and its last
        heartbeat (or, without one, its last state change) is within the timeout."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT state NOT IN ('down', 'unknown', 'error', 'terminated') "
                "AND coalesce(last_heartbeat_at, state_changed_at) "
                ">= now() - make_interval(secs => %s) "
                "FROM nodes WHERE id = %s AND deleted_at IS NULL",
                (timeout_seconds, node_id),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    async def mark_silent_down(
        self, timeout_seconds: float, *, conn: Conn | None = None
    ) -> list[uuid.UUID]:
        """Nodes (booting, ready, draining, unknown) whose last heartbeat (or, without one,
        their last state change) is older than the timeout go ``down``, remembering a serving
        state (ready/draining) to return to; returns their ids."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "UPDATE nodes SET state = 'down', state_changed_at = now(), "
                "state_before_down = CASE WHEN state IN ('ready', 'draining') THEN state END "
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
        """Down nodes that heartbeat again within the timeout return to the state they went
        down from (``draining`` stays draining, else ``ready``)."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                f"UPDATE nodes SET state = {_BACK_FROM_DOWN}, state_changed_at = now(), "
                "state_before_down = NULL "
                "WHERE deleted_at IS NULL AND state = 'down' "
                "AND last_heartbeat_at >= now() - make_interval(secs => %s) "
                "AND last_heartbeat_at > state_changed_at RETURNING id",
                (timeout_seconds,),
            )
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def assign_subnet(
        self,
        node_id: uuid.UUID,
        *,
        requested: str | None,
        pool: SubnetPool | None,
        conn: Conn | None = None,
    ) -> str | None:
        """The node's instance subnet, recorded once and then stable.

        A node that has one keeps it (Conflict when the agent asks for another: its setting
        or data dir disagrees with the operator). Otherwise the ``requested`` subnet (the
        agent's explicit setting) is recorded if it overlaps no other live node's, else the
        first free block of ``pool``; None without either. Serialised by a transaction
        advisory lock (and backed by the ``nodes_subnet_excl`` constraint).
        """
        async with self._db.transaction(conn) as c:
            await c.execute("SELECT pg_advisory_xact_lock(%s)", (_SUBNET_LOCK,))
            cur = await c.execute(
                "SELECT subnet FROM nodes WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (node_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"node {node_id} does not exist")
            current: ipaddress.IPv4Network | None = row[0]
            wanted = None if requested is None else ipaddress.IPv4Network(requested)
            if current is not None:
                if wanted is not None and wanted != current:
                    raise Conflict(
                        f"node {node_id} has the instance subnet {current} recorded by the "
                        f"operator, but its agent uses {wanted} (ZEITWORK_NODE_SUBNET or its "
                        "data dir); use the recorded one, or delete the node to start afresh",
                        extra={"subnet": str(current), "requested": str(wanted)},
                    )
                return str(current)
            if wanted is None and pool is None:
                return None
            cur = await c.execute(
                "SELECT subnet FROM nodes WHERE deleted_at IS NULL AND subnet IS NOT NULL "
                "AND id <> %s",
                (node_id,),
            )
            taken: list[ipaddress.IPv4Network] = [r[0] for r in await cur.fetchall()]
            if wanted is not None:
                clashes = overlapping(wanted, taken)
                if clashes:
                    raise Conflict(
                        f"subnet {wanted} overlaps the instance subnet of another node "
                        f"({', '.join(map(str, clashes))})",
                        extra={"requested": str(wanted)},
                    )
                chosen = wanted
            else:
                assert pool is not None
                found = first_free(pool.network, pool.prefix, taken)
                if found is None:
                    raise Conflict(
                        f"no free /{pool.prefix} left in the instance network {pool.network} "
                        "(ZEITWORK_INSTANCE_NETWORK); delete nodes or widen it"
                    )
                chosen = found
            await c.execute("UPDATE nodes SET subnet = %s WHERE id = %s", (chosen, node_id))
            return str(chosen)

    async def peers(
        self, node_id: uuid.UUID, *, conn: Conn | None = None
    ) -> tuple[int, list[NodePeer]]:
        """Every other serving node with a subnet, and the ``peers`` version of that read."""
        async with self._db.connection(conn) as c, c.transaction():
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = await changes.version(c, changes.PEERS)
            cur = await c.execute(
                "SELECT id, subnet::text, ip_address FROM nodes WHERE deleted_at IS NULL "
                f"AND state IN {SERVING} AND subnet IS NOT NULL AND id <> %s ORDER BY subnet",
                (node_id,),
            )
            rows = await cur.fetchall()
        return version, [NodePeer(node_id=r[0], subnet=r[1], ip_address=r[2]) for r in rows]

    async def agent_endpoints(
        self, node_ids: Iterable[uuid.UUID], *, conn: Conn | None = None
    ) -> dict[uuid.UUID, AgentEndpoint]:
        """The agent API address and credential of each of ``node_ids`` that exists."""
        wanted = sorted(set(node_ids))
        if not wanted:
            return {}
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT id, hostname, agent_url, agent_token FROM nodes "
                "WHERE id = ANY(%s) AND deleted_at IS NULL",
                (wanted,),
            )
            rows = await cur.fetchall()
        return {
            r[0]: AgentEndpoint(node_id=r[0], hostname=r[1], url=r[2], token=r[3]) for r in rows
        }

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
                "AND deleted_at IS NULL AND lost_at IS NULL",
                (node_id,),
            )
            counted = await cur.fetchone()
            remaining = 0 if counted is None else int(counted[0])
            if remaining:
                raise Conflict(
                    f"node {node_id} still has {remaining} instance(s) that are not terminated",
                    extra={"instances": remaining},
                )
            # instances lost with the node (already replaced, reservation released) end here
            await c.execute(
                "UPDATE instances SET state = 'terminated', state_changed_at = now() "
                "WHERE node_id = %s AND lost_at IS NOT NULL AND state <> 'terminated'",
                (node_id,),
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
