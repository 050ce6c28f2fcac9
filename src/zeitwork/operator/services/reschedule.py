"""Rescheduling off dead nodes.

A node that has been ``down`` for longer than the grace period (``ZEITWORK_RESCHEDULE_AFTER``)
loses its instances: each becomes ``failed`` with a reason, desired ``terminated`` and
soft-deleted, and its reservation is released (``InstanceStore.mark_lost``). Each lost
instance of a live deployment then gets a replacement, placed like any deployment replica
(the scheduler's pure plan, spread first, applied with the conditional reservation), linked
by ``replaced_by`` and recorded in ``deployment_instances``. What cannot be placed now (no
ready node has room) is retried on the next pass. If the dead node comes back, its agent
finds the lost instances with desired ``terminated`` in its assignments and removes them;
they never reach the route table again (soft-deleted, and ``failed`` is sticky for them).

One pass runs in one transaction guarded by ``pg_try_advisory_xact_lock``: with several
operators only the one holding the lock acts; the others skip that pass.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import structlog

from zeitwork.core.errors import InsufficientCapacity, ZeitworkError
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.instances import InstanceStore
from zeitwork.operator.services.instances import InstanceService

log = structlog.get_logger("zeitwork.operator.reschedule")

LOCK_KEY = 0x7A77_5253  # the rescheduler's advisory lock ("zwRS")


@dataclass
class Pass:
    """What one pass did (``leader`` False: another operator held the lock)."""

    leader: bool = True
    lost: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    """node id -> instances marked lost on it"""
    replaced: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """lost instance id -> its replacement"""
    waiting: list[uuid.UUID] = field(default_factory=list)
    """lost instances that could not be placed yet"""


class Rescheduler:
    def __init__(
        self,
        *,
        db: Database,
        instances: InstanceStore,
        instance_service: InstanceService,
        grace_seconds: float,
        locked: bool = True,
    ) -> None:
        """``locked`` False: the caller holds the leader lock (the reconcile loop)."""
        self._db = db
        self._instances = instances
        self._service = instance_service
        self.grace = grace_seconds
        self._locked = locked

    async def sweep(self) -> Pass:
        done = Pass()
        async with self._db.transaction() as tx:
            if self._locked:
                cur = await tx.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,))
                row = await cur.fetchone()
                if row is None or not row[0]:
                    done.leader = False
                    return done
            # the node rows stay locked until commit: a heartbeat reviving one waits, and
            # then finds it ready with its instances already lost
            cur = await tx.execute(
                "SELECT id, state_changed_at FROM nodes WHERE state = 'down' "
                "AND deleted_at IS NULL AND state_changed_at < now() - make_interval(secs => %s) "
                "AND EXISTS (SELECT 1 FROM instances i WHERE i.node_id = nodes.id "
                "AND i.state <> 'terminated' AND i.lost_at IS NULL) "
                "ORDER BY id FOR UPDATE SKIP LOCKED",
                (self.grace,),
            )
            for node_id, since in await cur.fetchall():
                reason = (
                    f"lost: node {node_id} has been down since {since.isoformat()} "
                    f"(longer than {self.grace:g} s)"
                )
                lost = await self._instances.mark_lost(node_id, reason=reason, conn=tx)
                done.lost[node_id] = [i.id for i in lost]
                log.warning(
                    "node.instances_lost",
                    node_id=str(node_id),
                    instances=[str(i.id) for i in lost],
                    down_since=since.isoformat(),
                )
            for old in await self._instances.unreplaced(conn=tx):
                try:
                    async with self._db.transaction(tx) as attempt:
                        new = await self._service.create(old.spec(), conn=attempt)
                        await self._instances.set_replaced_by(old.id, new.id, conn=attempt)
                except InsufficientCapacity as exc:
                    done.waiting.append(old.id)
                    log.warning(
                        "instance.replacement_waiting", instance_id=str(old.id), error=exc.detail
                    )
                    continue
                except ZeitworkError as exc:  # e.g. its image was deleted meanwhile
                    done.waiting.append(old.id)
                    log.error(
                        "instance.replacement_failed", instance_id=str(old.id), error=exc.detail
                    )
                    continue
                done.replaced[old.id] = new.id
                log.info(
                    "instance.replaced",
                    instance_id=str(old.id),
                    replacement_id=str(new.id),
                    node_id=str(new.node_id),
                    deployment_id=str(old.deployment_id),
                )
        return done
