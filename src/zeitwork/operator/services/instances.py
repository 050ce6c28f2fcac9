"""Instance use cases: scheduling a new instance (pure decision, atomic application),
placing a deployment's replicas all-or-nothing, state reports and termination."""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable

import structlog

from zeitwork.core.errors import Conflict, InsufficientCapacity, InvalidInput
from zeitwork.core.resources import Resources
from zeitwork.core.states import InstanceState
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.instances import Instance, InstanceRequest, InstanceStore, StatusUpdate
from zeitwork.operator.scheduler.placement import (
    NodeCandidate,
    NoFit,
    Strategy,
    place,
    place_replicas,
)
from zeitwork.operator.scheduler.snapshot import CandidateSnapshots
from zeitwork.wire.agent import InstanceStatus, InstanceStatusReport

log = structlog.get_logger("zeitwork.operator.instances")

_ROUNDS = 4
_TRIES_PER_ROUND = 8


def no_fit_error(decision: NoFit) -> InsufficientCapacity:
    extra: dict[str, object] = {
        "requested": {"vcpu": decision.request.vcpu, "memory": decision.request.memory_mib},
        "ready_nodes": decision.ready_nodes,
        "shortfall": decision.shortfall,
    }
    if decision.best_free is not None:
        extra["best_free"] = {
            "vcpu": decision.best_free.vcpu,
            "memory": decision.best_free.memory_mib,
        }
    return InsufficientCapacity(decision.message(), extra=extra)


def status_update(report: InstanceStatus | InstanceStatusReport) -> StatusUpdate:
    """What an agent reported (per transition or in a heartbeat), as a store update.

    The address must be an IP address (InvalidInput otherwise): it becomes a backend in the
    route table of every load balancer and edge, which refuse the table over a bad one."""
    address = report.ip_address
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError as exc:
            raise InvalidInput(f"ip_address {address[:100]!r} is not an IP address") from exc
    health = report.health
    return StatusUpdate(
        state=report.state,
        ip_address=address,
        port=report.port,
        exit_code=report.exit_code,
        oom_killed=report.oom_killed,
        reason=report.reason,
        log_tail=tuple(report.log_tail),
        health=None if health is None else health.state,
        health_detail=(
            None if health is None or health.last is None else health.last.model_dump(mode="json")
        ),
    )


class InstanceService:
    def __init__(
        self,
        *,
        db: Database,
        instances: InstanceStore,
        strategy: Strategy = Strategy.BINPACK,
        snapshot_seconds: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._instances = instances
        self._strategy = strategy
        self._snapshots = CandidateSnapshots(ttl=snapshot_seconds)
        self._monotonic = monotonic
        self._salt = secrets.randbits(128)  # this process's order among equal nodes
        self._inflight: Counter[uuid.UUID] = Counter()
        """Placements of this process under way, per node: concurrent requests try other
        nodes first instead of queueing on (or skipping past) the same locked row."""

    async def create(
        self, spec: InstanceRequest, *, node_id: uuid.UUID | None = None, conn: Conn | None = None
    ) -> Instance:
        """Place ``spec`` on ``node_id`` (capacity still checked) or where the scheduler
        says; InsufficientCapacity (409, naming the shortfall) when nothing fits."""
        if node_id is not None:
            instance = await self._place_on(node_id, spec, conn=conn)
        else:
            instance = await self._schedule(spec, conn=conn)
        log.info(
            "instance.placed",
            instance_id=str(instance.id),
            node_id=str(instance.node_id),
            deployment_id=str(spec.deployment_id) if spec.deployment_id else None,
        )
        return instance

    async def _place_on(
        self, node_id: uuid.UUID, spec: InstanceRequest, *, conn: Conn | None
    ) -> Instance:
        instance = await self._instances.try_place(node_id, spec, wait_for_lock=True, conn=conn)
        if instance is not None:
            return instance
        await self._instances.check_image_ready(spec.image_id, conn=conn)
        node = await self._instances.node_candidate(node_id, conn=conn)  # NotFound
        decision = place([node], spec.resources, strategy=self._strategy)
        if isinstance(decision, NoFit):
            raise no_fit_error(decision)
        raise Conflict(
            f"node {node_id} is not ready to take instances",
            extra={"node_id": str(node_id)},
        )

    async def _schedule(self, spec: InstanceRequest, *, conn: Conn | None) -> Instance:
        """Plan on a snapshot of candidates (fresh, or the process's recent one for a
        stand-alone instance), then apply: the first candidate whose conditional UPDATE
        succeeds wins. A refusing node leaves the snapshot; after a round without success
        the candidates are read again; "nothing fits" only ever comes from a fresh read."""
        request = spec.resources
        cacheable = spec.deployment_id is None and conn is None
        for round_ in range(_ROUNDS):
            now = self._monotonic()
            candidates = self._snapshots.get(request, now) if cacheable and round_ == 0 else None
            fresh = candidates is None
            if candidates is None:
                candidates = await self._instances.candidates(
                    request,
                    deployment_id=spec.deployment_id,
                    limit=None if spec.deployment_id is not None else 32,
                    conn=conn,
                )
                if cacheable:
                    self._snapshots.put(request, candidates, now)
            decision = place(candidates, request, strategy=self._strategy, salt=self._salt)
            if isinstance(decision, NoFit):
                if fresh:
                    await self._instances.check_image_ready(spec.image_id, conn=conn)
                    await self._raise_no_fit(request, conn=conn)
                continue  # stale snapshot, or capacity appeared meanwhile: read again
            wait = round_ > 0  # the first round skips nodes that racing placements hold
            order = sorted(decision.node_ids, key=lambda n: self._inflight[n] > 0)  # stable
            for node_id in order[:_TRIES_PER_ROUND]:
                self._inflight[node_id] += 1
                try:
                    instance = await self._instances.try_place(
                        node_id, spec, wait_for_lock=wait, conn=conn
                    )
                finally:
                    self._inflight[node_id] -= 1
                    if not self._inflight[node_id]:
                        del self._inflight[node_id]
                if instance is not None:
                    if cacheable:
                        self._snapshots.placed(node_id, request)
                    return instance
                self._snapshots.refused(request, node_id)
            # a whole round refused: maybe the image is the reason (checked off the hot path)
            await self._instances.check_image_ready(spec.image_id, conn=conn)
            self._snapshots.forget(request)
        raise InsufficientCapacity(
            "concurrent placements took the free capacity; retry the request",
            extra={"requested": {"vcpu": request.vcpu, "memory": request.memory_mib}},
        )

    async def _raise_no_fit(self, request: Resources, *, conn: Conn | None) -> None:
        everything: list[NodeCandidate] = await self._instances.candidates(
            request, feasible_only=False, limit=None, conn=conn
        )
        decision = place(everything, request, strategy=self._strategy)
        if isinstance(decision, NoFit):
            raise no_fit_error(decision)

    async def create_replicas(
        self, spec: InstanceRequest, count: int, *, conn: Conn | None = None
    ) -> list[Instance]:
        """Place ``count`` replicas of a deployment, spread across nodes, in one
        transaction: all of them or none (InsufficientCapacity)."""
        await self._instances.check_image_ready(spec.image_id, conn=conn)
        request = spec.resources
        async with self._db.transaction(conn) as tx:
            candidates = await self._instances.candidates(
                request,
                deployment_id=spec.deployment_id,
                release_id=spec.release_id,
                feasible_only=False,
                limit=None,
                conn=tx,
            )
            chosen = place_replicas(candidates, request, count, strategy=self._strategy)
            if isinstance(chosen, NoFit):
                raise no_fit_error(chosen)
            placed: list[Instance] = []
            # nodes are locked in one global order, so that two deployments placed at the
            # same time cannot deadlock on each other's node rows
            for node_id in sorted(chosen):
                instance = await self._instances.try_place(
                    node_id, spec, wait_for_lock=True, conn=tx
                )
                if instance is None:  # a racing placement took it: re-plan for this one
                    instance = await self._schedule(spec, conn=tx)
                placed.append(instance)
        return placed

    async def report(
        self, instance_id: uuid.UUID, update: StatusUpdate, *, node_id: uuid.UUID | None
    ) -> Instance:
        instance = await self._instances.report(instance_id, update, node_id=node_id)
        log.info(
            "instance.state_reported",
            instance_id=str(instance_id),
            state=update.state.value,
            node_id=str(instance.node_id),
        )
        return instance

    async def reconcile(self, node_id: uuid.UUID, statuses: list[InstanceStatus]) -> int:
        """Apply what a heartbeat says about the node's instances where it differs from
        the database (a per-transition report was lost or refused): the reported state is
        taken when the transition table can reach it. Returns how many changed."""
        known = await self._instances.states_on(node_id)
        changed = 0
        for status in statuses:
            current = known.get(status.id)
            if current is None:
                continue  # not ours, or terminated already
            state, ip, port, health = current
            moved = status.state is not state
            readdressed = status.state is InstanceState.RUNNING and (
                (status.ip_address and status.ip_address != ip)
                or (status.port and status.port != port)
            )
            rechecked = (
                status.state is InstanceState.RUNNING
                and status.health is not None
                and status.health.state is not health
            )
            if not (moved or readdressed or rechecked):
                continue
            try:
                update = status_update(status)
                await self._instances.report(status.id, update, node_id=node_id, lenient=True)
            except (Conflict, InvalidInput) as exc:  # changed meanwhile, or a bad address
                log.info("instance.reconcile_skipped", instance_id=str(status.id), error=exc.detail)
                continue
            changed += 1
            log.info(
                "instance.reconciled",
                instance_id=str(status.id),
                state=status.state.value,
                was=state.value,
            )
        return changed

    async def terminate(self, instance_id: uuid.UUID) -> Instance:
        instance = await self._instances.terminate(instance_id)
        log.info("instance.terminating", instance_id=str(instance_id))
        return instance
