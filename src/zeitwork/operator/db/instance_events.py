"""Events of an instance's reported changes: which ones a change is (pure, ``describe``)
and their rows, written in the transaction of the change (``record_change``).

Kinds: ``instance.starting`` (a warning when it restarts), ``instance.started`` (running),
``instance.healthy``, ``instance.unhealthy`` (with the check's detail), ``instance.exited``
(with its code), ``instance.oom_killed``, ``instance.failed`` (failed for any other
reason), ``instance.stopped`` (stopped or terminated without an exit code of note).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from zeitwork.core.states import HealthState, InstanceState
from zeitwork.operator.db import events
from zeitwork.operator.db.database import Conn


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What ``describe`` needs of an instance row."""

    state: InstanceState
    health: HealthState
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None
    health_detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Note:
    kind: str
    message: str
    level: events.Level = "info"
    data: dict[str, Any] = field(default_factory=dict)


def _check_detail(detail: dict[str, Any] | None) -> str:
    if not detail:
        return "no result"
    return str(detail.get("detail") or ("ok" if detail.get("ok") else "failed"))


def describe(before: InstanceFacts, after: InstanceFacts) -> list[Note]:
    """The events of the change ``before -> after`` (none when nothing of note moved)."""
    notes: list[Note] = []
    moved = before.state is not after.state
    if moved and after.state is InstanceState.STARTING:
        restart = before.state is not InstanceState.PENDING
        notes.append(
            Note(
                "instance.starting",
                "instance restarts" if restart else "instance is starting",
                "warning" if restart else "info",
            )
        )
    if moved and after.state is InstanceState.RUNNING:
        notes.append(Note("instance.started", "instance is running"))
    if moved and after.state in (InstanceState.FAILED, InstanceState.STOPPED):
        data: dict[str, Any] = {"exit_code": after.exit_code, "reason": after.reason}
        if after.oom_killed:
            notes.append(Note("instance.oom_killed", "killed: out of memory", "error", data))
        elif after.exit_code is not None and after.exit_code != 0:
            notes.append(
                Note("instance.exited", f"exited with code {after.exit_code}", "error", data)
            )
        elif after.state is InstanceState.FAILED:
            cause = after.reason or "no reason given"
            notes.append(Note("instance.failed", f"failed: {cause}"[:500], "error", data))
        else:
            notes.append(Note("instance.stopped", "instance stopped", data=data))
    if moved and after.state is InstanceState.TERMINATED:
        notes.append(Note("instance.stopped", "instance terminated"))
    if before.health is not after.health:
        if after.health is HealthState.HEALTHY:
            notes.append(Note("instance.healthy", "health check passes"))
        elif after.health is HealthState.UNHEALTHY:
            detail = _check_detail(after.health_detail)
            notes.append(
                Note(
                    "instance.unhealthy",
                    f"health check fails: {detail}"[:500],
                    "warning",
                    {"check": after.health_detail},
                )
            )
    return notes


async def record_change(
    conn: Conn,
    before: InstanceFacts,
    after: InstanceFacts,
    *,
    instance_id: uuid.UUID,
    node_id: uuid.UUID | None,
    release_id: uuid.UUID | None,
) -> int:
    """Record ``describe``'s events in ``conn``'s transaction; returns how many."""
    notes = describe(before, after)
    if not notes:
        return 0
    project_id = environment_id = None
    if release_id is not None:
        cur = await conn.execute(
            "SELECT project_id, project_environment_id FROM releases WHERE id = %s",
            (release_id,),
        )
        row = await cur.fetchone()
        if row is not None:
            project_id, environment_id = row
    for note in notes:
        await events.record(
            conn,
            note.kind,
            note.message,
            level=note.level,
            project_id=project_id,
            project_environment_id=environment_id,
            release_id=release_id,
            instance_id=instance_id,
            node_id=node_id,
            data=note.data,
        )
    return len(notes)
