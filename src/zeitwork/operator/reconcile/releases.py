"""The releases reconciler: for every environment with a current release or a running
rollout, read its view from PostgreSQL, ask the pure planner (``rollout_plan.plan``) for
the next actions and apply them, in one transaction per environment that holds the
environment's row lock (deploys take it too, so a pass never acts on a view a deploy has
changed). Every write is compare-and-set; nothing is kept in memory between passes, so a
restarted operator picks a rollout up from the rows.

Times in the view are seconds since the epoch as PostgreSQL sees them (``now()`` of the
pass's transaction), the clock the rows' timestamps come from.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from psycopg.rows import dict_row

from zeitwork.core.errors import (
    Conflict,
    InsufficientCapacity,
    InvalidInput,
    NotFound,
    ZeitworkError,
)
from zeitwork.core.states import HealthState, InstanceState, ReleaseState, RolloutState
from zeitwork.operator.db import changes, events
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.instances import InstanceRequest, InstanceStore
from zeitwork.operator.db.releases import Release, ReleaseStore, Rollout
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.operator.services.instances import InstanceService
from zeitwork.wire.releases import RolloutStrategy

log = structlog.get_logger("zeitwork.operator.reconcile.releases")

Planner = Callable[[rp.EnvironmentView], list[rp.Action]]

FAILURE_WINDOW_SECONDS = 600.0
SERVING_NODES = ("ready", "draining")
TOPIC_ORDER = (changes.ROUTES, changes.RELEASES)
"""node states whose instances' reports count (the route table lists their instances)"""
FAILURE_KINDS = ("instance.failed", "instance.exited", "instance.oom_killed")


def strategy_of(raw: dict[str, Any], replicas: int) -> rp.ResolvedStrategy:
    """A release's stored strategy, counts resolved against ``replicas``."""
    wire = RolloutStrategy.model_validate(raw)
    return rp.ResolvedStrategy(
        type=wire.type,
        max_surge=rp.resolve_count(wire.max_surge, replicas, round_up=True),
        max_unavailable=rp.resolve_count(wire.max_unavailable, replicas, round_up=False),
        min_healthy_time=wire.min_healthy_time,
        drain_timeout=wire.drain_timeout,
        progress_deadline=wire.progress_deadline,
        healthy_deadline=wire.healthy_deadline,
        auto_revert=wire.auto_revert,
    )


def _release_view(release: Release | None, replicas: int) -> rp.ReleaseView | None:
    if release is None:
        return None
    return rp.ReleaseView(release.id, release.version, strategy_of(release.strategy, replicas))


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def instance_spec(release: Release) -> InstanceRequest:
    """A new instance of ``release``: its spec travels in the instance's row."""
    stop_timeout = float(release.strategy.get("stop_timeout", 10.0))
    return InstanceRequest(
        image_id=release.image_id,
        vcpu_millis=release.vcpu_millis,
        memory_mib=release.memory_mib,
        default_port=release.port,
        environment_variables=dict(release.env),
        restart_policy=release.restart_policy,
        release_id=release.id,
        command=release.command,
        health_check=release.health_check,
        stop_timeout=stop_timeout,
    )


def step_summary(actions: list[rp.Action]) -> dict[str, int]:
    """How many of each kind of action a pass takes (waits left out), for the
    ``rollout.step`` event: ``{"place": 1, "serve": 1, "unserve": 1}``."""
    counts: dict[str, int] = {}
    for action in actions:
        if isinstance(action, rp.Wait):
            continue
        kind = type(action).__name__.lower()
        counts[kind] = counts.get(kind, 0) + (action.count if isinstance(action, rp.Place) else 1)
    return counts


@dataclass
class EnvironmentPass:
    environment_id: uuid.UUID
    actions: list[rp.Action] = field(default_factory=list)
    placed: list[uuid.UUID] = field(default_factory=list)
    wake_at: float | None = None
    """epoch seconds when a timer makes progress possible"""
    now: float = 0.0


_INSTANCE_SQL = """
SELECT i.id, i.release_id, i.node_id, i.state, i.desired_state, i.health, i.created_at,
       i.healthy_since, i.serving, i.drain_started_at, i.exit_code, i.oom_killed, i.reason,
       i.health_detail, i.log_tail, n.state AS node_state, r.strategy AS release_strategy
FROM instances i JOIN releases r ON r.id = i.release_id
LEFT JOIN nodes n ON n.id = i.node_id
WHERE r.project_environment_id = %s AND i.state <> 'terminated'
ORDER BY i.created_at, i.id
FOR UPDATE OF i
"""


class ReleaseReconciler:
    name = "releases"

    def __init__(
        self,
        *,
        db: Database,
        releases: ReleaseStore,
        instances: InstanceStore,
        instance_service: InstanceService,
        planner: Planner = rp.plan,
    ) -> None:
        self._db = db
        self._releases = releases
        self._instances = instances
        self._service = instance_service
        self._plan = planner
        self._notes: list[tuple[str, str, dict[str, Any]]] = []
        self._topics: set[str] = set()

    async def sweep(self) -> float | None:
        """One pass over every live environment; returns the earliest epoch second a timer
        makes progress possible (None: waiting on outside changes only)."""
        wake: float | None = None
        for environment_id in await self._releases.live_environments():
            try:
                done = await self.reconcile(environment_id)
            except NotFound:
                continue  # deleted meanwhile
            except Conflict as exc:  # a row moved under a compare-and-set: plan again
                log.warning(
                    "releases.pass_conflict", environment_id=str(environment_id), error=exc.detail
                )
                continue
            if done.wake_at is not None:
                wake = done.wake_at if wake is None else min(wake, done.wake_at)
        return wake

    async def reconcile(self, environment_id: uuid.UUID) -> EnvironmentPass:
        """Plan and apply one environment, in one transaction."""
        async with self._db.transaction() as tx:
            view, current, target, rollout = await self.view(environment_id, conn=tx)
            done = EnvironmentPass(environment_id=environment_id, now=view.now)
            done.actions = self._plan(view)
            releases = {r.id: r for r in (current, target) if r is not None}
            self._notes = []
            self._topics = set()
            for action in done.actions:
                await self._apply(
                    tx, action, view=view, releases=releases, rollout=rollout, done=done
                )
            moves = step_summary(done.actions)
            if rollout is not None and target is not None and moves:
                self._note(
                    "rollout.step",
                    ", ".join(f"{kind} {count}" for kind, count in moves.items()),
                    **self._ids(target, rollout),
                    data=moves,
                )
            # topics and events last, in the order a state report takes them (instance row,
            # routes, releases, events): every instance row this pass touches is locked by
            # the view first, so a report and a pass never wait on each other in a circle
            for topic in TOPIC_ORDER:
                if topic in self._topics:
                    await changes.bump(tx, topic)
            for kind, message, fields in self._notes:
                await events.record(tx, kind, message, **fields)
        for action in done.actions:
            if not isinstance(action, rp.Wait):
                log.info("rollout.action", environment_id=str(environment_id), action=repr(action))
        return done

    async def view(
        self, environment_id: uuid.UUID, *, conn: Conn
    ) -> tuple[rp.EnvironmentView, Release | None, Release | None, Rollout | None]:
        """The planner's view of one environment (locks its row for the transaction)."""
        env = await self._releases.environment_by_id(environment_id, lock=True, conn=conn)
        cur = await conn.execute("SELECT extract(epoch FROM now())::float8")
        row = await cur.fetchone()
        assert row is not None
        now = float(row[0])
        current = (
            None
            if env.current_release_id is None
            else await self._releases.get(env.current_release_id, conn=conn)
        )
        rollout = await self._releases.running_rollout(environment_id, conn=conn)
        target = (
            None if rollout is None else await self._releases.get(rollout.release_id, conn=conn)
        )
        async with conn.cursor(row_factory=dict_row) as c:
            await c.execute(_INSTANCE_SQL, (environment_id,))
            rows = await c.fetchall()
        known: dict[uuid.UUID, float] = {}

        def drain_timeouts(release_id: uuid.UUID, raw: dict[str, Any] | None) -> float:
            if release_id not in known:
                known[release_id] = RolloutStrategy.model_validate(raw or {}).drain_timeout
            return known[release_id]

        instances = tuple(
            rp.ReplicaView(
                id=r["id"],
                release_id=r["release_id"],
                node_id=r["node_id"],
                state=InstanceState(r["state"]),
                desired_state=r["desired_state"],
                health=HealthState(r["health"]),
                created_at=r["created_at"].timestamp(),
                healthy_since=_epoch(r["healthy_since"]),
                serving=r["serving"],
                drain_started_at=_epoch(r["drain_started_at"]),
                node_schedulable=r["node_state"] == "ready",
                node_down=r["node_id"] is not None and r["node_state"] not in SERVING_NODES,
                exit_code=r["exit_code"],
                oom_killed=r["oom_killed"],
                reason=r["reason"],
                last_check=(r["health_detail"] or {}).get("detail") or None,
                log_tail=tuple(str(x) for x in (r["log_tail"] or [])[-20:]),
                drain_timeout=drain_timeouts(r["release_id"], r["release_strategy"]),
            )
            for r in rows
        )
        failures: tuple[float, ...] = ()
        if current is not None:
            cur = await conn.execute(
                "SELECT extract(epoch FROM created_at)::float8 FROM events "
                "WHERE release_id = %s AND kind = ANY(%s) "
                "AND created_at > now() - make_interval(secs => %s) ORDER BY seq",
                (current.id, list(FAILURE_KINDS), FAILURE_WINDOW_SECONDS),
            )
            failures = tuple(float(r[0]) for r in await cur.fetchall())
        view = rp.EnvironmentView(
            environment_id=environment_id,
            now=now,
            replicas=env.replicas,
            current=_release_view(current, env.replicas),
            target=_release_view(target, env.replicas),
            rollout_id=None if rollout is None else rollout.id,
            rollout_started_at=None if rollout is None else rollout.created_at.timestamp(),
            instances=instances,
            recent_failures=failures,
        )
        return view, current, target, rollout

    # -- apply ---------------------------------------------------------------------------

    async def _apply(
        self,
        tx: Conn,
        action: rp.Action,
        *,
        view: rp.EnvironmentView,
        releases: dict[uuid.UUID, Release],
        rollout: Rollout | None,
        done: EnvironmentPass,
    ) -> None:
        match action:
            case rp.Place(release_id=release_id, count=count):
                await self._place(tx, releases[release_id], count, rollout, done)
            case rp.Serve(instance_id=instance_id):
                await self._serve(tx, instance_id, releases, rollout)
            case rp.Unserve(instance_id=instance_id, drain=drain):
                await self._unserve(
                    tx, instance_id, drain=drain, releases=releases, rollout=rollout
                )
            case rp.Terminate(instance_id=instance_id, reason=reason):
                await self._stop(tx, instance_id, reason, releases, rollout)
            case rp.Promote(release_id=release_id):
                await self._promote(tx, view, releases[release_id], rollout)
            case rp.Fail(release_id=release_id, cause=cause):
                await self._fail(tx, releases[release_id], cause, rollout)
            case rp.Wait(until=until):
                if until is not None:
                    done.wake_at = until if done.wake_at is None else min(done.wake_at, until)

    def _note(self, kind: str, message: str, **fields: Any) -> None:
        """An event of this pass, written at its end (see ``reconcile``)."""
        self._notes.append((kind, message, fields))

    @staticmethod
    def _ids(release: Release | None, rollout: Rollout | None) -> dict[str, Any]:
        return {
            "project_id": None if release is None else release.project_id,
            "project_environment_id": None if release is None else release.project_environment_id,
            "release_id": None if release is None else release.id,
            "rollout_id": None if rollout is None else rollout.id,
        }

    async def _place(
        self,
        tx: Conn,
        release: Release,
        count: int,
        rollout: Rollout | None,
        done: EnvironmentPass,
    ) -> None:
        spec = instance_spec(release)
        in_rollout = rollout if rollout is not None and rollout.release_id == release.id else None
        for _ in range(count):
            try:
                async with self._db.transaction(tx) as attempt:
                    (instance,) = await self._service.create_replicas(spec, 1, conn=attempt)
            except InsufficientCapacity as exc:
                log.warning(
                    "instance.placement_waiting", release_id=str(release.id), error=exc.detail
                )
                done.wake_at = done.now + 5.0 if done.wake_at is None else done.wake_at
                return
            except InvalidInput as exc:  # its image went away (deleted) meanwhile
                log.error("instance.placement_failed", release_id=str(release.id), error=exc.detail)
                return
            done.placed.append(instance.id)
            self._note(
                "instance.placed",
                f"v{release.version} instance placed on node {instance.node_id}",
                instance_id=instance.id,
                node_id=instance.node_id,
                **self._ids(release, in_rollout),
            )

    async def _release_of(
        self, tx: Conn, instance_id: uuid.UUID, releases: dict[uuid.UUID, Release]
    ) -> Release | None:
        cur = await tx.execute("SELECT release_id FROM instances WHERE id = %s", (instance_id,))
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        return releases.get(row[0]) or await self._releases.get(row[0], conn=tx)

    async def _serve(
        self,
        tx: Conn,
        instance_id: uuid.UUID,
        releases: dict[uuid.UUID, Release],
        rollout: Rollout | None,
    ) -> None:
        cur = await tx.execute(
            "UPDATE instances SET serving = true, drain_started_at = NULL WHERE id = %s "
            "AND NOT serving AND state = 'running' AND health = 'healthy' "
            "AND desired_state = 'running' AND deleted_at IS NULL RETURNING node_id",
            (instance_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return  # changed since the view: the next pass sees it
        self._topics.add(changes.ROUTES)
        release = await self._release_of(tx, instance_id, releases)
        self._note(
            "instance.serving",
            "instance joined the route",
            instance_id=instance_id,
            node_id=row[0],
            **self._ids(release, rollout),
        )

    async def _unserve(
        self,
        tx: Conn,
        instance_id: uuid.UUID,
        *,
        drain: bool,
        releases: dict[uuid.UUID, Release],
        rollout: Rollout | None,
    ) -> None:
        cur = await tx.execute(
            "UPDATE instances SET serving = false, "
            "drain_started_at = coalesce(drain_started_at, now()) "
            "WHERE id = %s AND (serving OR drain_started_at IS NULL) RETURNING node_id, "
            "(state = 'running' AND health = 'healthy') AS was_listed",
            (instance_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return
        self._topics.add(changes.ROUTES)
        release = await self._release_of(tx, instance_id, releases)
        self._note(
            "instance.draining" if drain else "instance.unserved",
            "instance left the route" + (" and drains" if drain else ""),
            instance_id=instance_id,
            node_id=row[0],
            **self._ids(release, rollout),
        )
        if not drain:
            await self._stop(tx, instance_id, "left the route without draining", releases, rollout)

    async def _stop(
        self,
        tx: Conn,
        instance_id: uuid.UUID,
        reason: str,
        releases: dict[uuid.UUID, Release],
        rollout: Rollout | None,
    ) -> None:
        cur = await tx.execute(
            "UPDATE instances SET serving = false WHERE id = %s AND serving", (instance_id,)
        )
        if cur.rowcount:
            self._topics.add(changes.ROUTES)
        try:
            instance = await self._instances.terminate(instance_id, conn=tx)
        except NotFound:
            return  # terminating already
        release = await self._release_of(tx, instance_id, releases)
        self._note(
            "instance.stopping",
            f"stopping instance: {reason}"[:500],
            instance_id=instance_id,
            node_id=instance.node_id,
            data={"reason": reason},
            **self._ids(release, rollout),
        )

    async def _promote(
        self,
        tx: Conn,
        view: rp.EnvironmentView,
        release: Release,
        rollout: Rollout | None,
    ) -> None:
        previous = view.current.id if view.current is not None else None
        if previous == release.id:
            return
        await self._releases.set_current(
            release.project_environment_id, release.id, expected=previous, conn=tx
        )
        if not await self._releases.set_release_state(
            release.id, ReleaseState.DEPLOYING, ReleaseState.ACTIVE, conn=tx
        ):
            raise ZeitworkError(f"release {release.id} is not deploying; cannot promote it")
        if previous is not None:
            await self._releases.set_release_state(
                previous, ReleaseState.ACTIVE, ReleaseState.SUPERSEDED, conn=tx
            )
        if rollout is not None and rollout.release_id == release.id:
            await self._releases.finish_rollout(rollout.id, RolloutState.SUCCEEDED, conn=tx)
        self._topics.add(changes.ROUTES)
        self._note(
            "rollout.succeeded",
            f"v{release.version} is current",
            **self._ids(release, rollout),
            data={"version": release.version},
        )
        log.info("rollout.succeeded", release_id=str(release.id), version=release.version)

    async def _fail(self, tx: Conn, release: Release, cause: str, rollout: Rollout | None) -> None:
        changed = await self._releases.set_release_state(
            release.id, ReleaseState.DEPLOYING, ReleaseState.FAILED, error=cause, conn=tx
        )
        if rollout is not None and rollout.release_id == release.id:
            await self._releases.finish_rollout(
                rollout.id, RolloutState.FAILED, error=cause, conn=tx
            )
        if not changed:
            return
        self._note(
            "rollout.failed",
            f"v{release.version} failed: {cause}"[:4000],
            level="error",
            **self._ids(release, rollout),
            data={"cause": cause, "version": release.version},
        )
        self._topics.add(changes.RELEASES)
        log.warning("rollout.failed", release_id=str(release.id), cause=cause)
