"""Desired vs running: keeps this node's instances where the operator (or the local API)
wants them, through the runtime driver, and reports every transition.

Each tick: inspect the instances that should be alive, ask ``plan.plan`` for the next steps,
apply them (starts, stops and removals run as their own tasks, so one slow start does not
hold up the others). Every record (assignment, driver handle, address, state) is persisted
atomically on each change, so an agent restart re-adopts instead of starting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from zeitwork.agent import plan as planning
from zeitwork.agent.health import HealthMonitor
from zeitwork.agent.images import NodeImages
from zeitwork.agent.state_store import StateStore
from zeitwork.core.errors import (
    InsufficientCapacity,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    ZeitworkError,
)
from zeitwork.core.resources import ZERO, Resources
from zeitwork.core.states import InstanceState
from zeitwork.observability import get_logger
from zeitwork.runtime.base import (
    Driver,
    Handle,
    InstanceSpec,
    LogEntry,
    NetworkAttachment,
    Phase,
    ProcessSpec,
    SupportsHousekeeping,
    SupportsLogEntries,
)
from zeitwork.wire.agent import AssignedInstance, InstanceStatus, InstanceStatusReport
from zeitwork.wire.health import InstanceHealth

log = get_logger(__name__)
S = InstanceState
ACTIVE = (S.STARTING, S.RUNNING, S.STOPPING)
_TELL_NOT_LISTENING_AFTER = 1.0  # s: then a starting instance reports why it waits
Reporter = Callable[[uuid.UUID, InstanceStatusReport], None]


class InstanceNetwork(Protocol):
    """What the supervisor needs of the node network (``agent.network.NodeNetwork``; the
    fake runtime's ``LoopbackNetwork`` in tests without root)."""

    def attachment(self, instance_id: uuid.UUID) -> NetworkAttachment | None: ...

    async def attach(self, instance_id: uuid.UUID) -> NetworkAttachment: ...

    async def detach(self, instance_id: uuid.UUID) -> None: ...

    async def cleanup(self, *, keep: set[uuid.UUID]) -> list[str]: ...


@dataclass
class Record:
    """Everything the agent knows about one instance (persisted, minus runtime fields)."""

    assignment: AssignedInstance
    state: InstanceState = S.PENDING
    source: str = "operator"
    handle: Handle | None = None
    address: str | None = None
    restarts: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None
    log_tail: list[str] = field(default_factory=list)
    override: planning.DesiredState | None = None  # set through the agent API
    completed: bool = False  # ended by itself under its restart policy (not restarted)
    # runtime only
    busy: bool = False
    alive: bool = False
    restart_at: float | None = None
    started_at: float | None = None
    liveness_failed: str | None = None  # why its health checks failed after it was healthy

    @property
    def instance_id(self) -> uuid.UUID:
        return self.assignment.id

    @property
    def resources(self) -> Resources:
        return Resources.of(
            vcpu=self.assignment.resources.vcpu, memory_mib=self.assignment.resources.memory
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "assignment": self.assignment.model_dump(mode="json"),
            "state": self.state.value,
            "source": self.source,
            "handle": None
            if self.handle is None
            else {"driver": self.handle.driver, "data": dict(self.handle.data)},
            "address": self.address,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "reason": self.reason,
            "override": self.override,
            "completed": self.completed,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Record:
        assignment = AssignedInstance.model_validate(value["assignment"])
        raw = value.get("handle")
        handle = None
        if isinstance(raw, dict):
            handle = Handle(instance_id=assignment.id, driver=raw["driver"], data=raw["data"])
        return cls(
            assignment=assignment,
            state=InstanceState(value.get("state", "pending")),
            source=str(value.get("source", "operator")),
            handle=handle,
            address=value.get("address"),
            restarts=int(value.get("restarts", 0)),
            exit_code=value.get("exit_code"),
            oom_killed=bool(value.get("oom_killed", False)),
            reason=value.get("reason"),
            override=value.get("override"),
            completed=bool(value.get("completed", False)),
        )

    def stop_timeout(self, bound: float | None) -> float:
        """Seconds between SIGTERM and SIGKILL: the assignment's ``stop_timeout``, at most
        ``bound`` (the agent's ``ZEITWORK_STOP_GRACE``, when set)."""
        timeout = self.assignment.stop_timeout
        return timeout if bound is None else min(timeout, bound)

    def status(self, health: InstanceHealth | None = None) -> InstanceStatus:
        return InstanceStatus(
            id=self.instance_id,
            state=self.state,
            ip_address=self.address if self.state == S.RUNNING else None,
            port=self.assignment.default_port if self.state == S.RUNNING else None,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            reason=self.reason[:4000] if self.reason else None,
            log_tail=self.log_tail[-50:],
            health=health if self.state == S.RUNNING else None,
        )


class Supervisor:
    def __init__(
        self,
        *,
        driver: Driver,
        network: InstanceNetwork,
        images: NodeImages,
        store: StateStore,
        capacity: Resources,
        report: Reporter,
        tuning: planning.Tuning | None = None,
        stop_grace: float | None = None,
        tick: float = 1.0,
        ready_timeout: float = 30.0,
        log_tail_lines: int = 20,
    ) -> None:
        self.driver = driver
        self.network = network
        self.images = images
        self.store = store
        self.capacity = capacity
        self._report = report
        self.tuning = tuning or planning.Tuning()
        self.stop_grace = stop_grace
        self.tick = tick
        self.ready_timeout = ready_timeout
        self.log_tail_lines = log_tail_lines
        self.records: dict[uuid.UUID, Record] = {}
        self.assigned: dict[uuid.UUID, AssignedInstance] = {}  # from the operator
        self.local: dict[uuid.UUID, AssignedInstance] = {}  # from the agent API
        self.assignments_known = False  # until the first answer, unknown instances stay
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.starts = 0  # number of driver starts made by this process (tests, metrics)
        self.health = HealthMonitor(
            on_change=self._health_changed, on_unhealthy=self._liveness_failed
        )

    # -- desired state ------------------------------------------------------------------
    def desired(self) -> dict[uuid.UUID, AssignedInstance]:
        merged = {**self.assigned, **self.local}
        if not self.assignments_known:
            # before the operator has answered once, keep every instance we already have
            for instance_id, record in self.records.items():
                merged.setdefault(instance_id, record.assignment)
        return merged

    def set_assignments(self, instances: list[AssignedInstance]) -> None:
        self.assigned = {item.id: item for item in instances}
        self.assignments_known = True
        for item in instances:
            record = self.records.get(item.id)
            if record is not None and record.source == "operator":
                record.assignment = item
        self.wake()

    def put_local(self, assignment: AssignedInstance) -> Record:
        """Add (or update) an instance through the agent API."""
        record = self.records.get(assignment.id)
        needed = Resources.of(
            vcpu=assignment.resources.vcpu, memory_mib=assignment.resources.memory
        )
        # an active instance keeps what it has; asking for more is checked like a new one
        if record is None or record.state not in ACTIVE or not needed.fits_in(record.resources):
            self._check_capacity(assignment.id, needed)
        self.local[assignment.id] = assignment
        if record is None:
            record = Record(assignment=assignment, source="local")
            self.records[assignment.id] = record
        record.assignment = assignment
        record.override = None
        self._persist(record)
        self.wake()
        return record

    def set_wanted_state(self, instance_id: uuid.UUID, state: planning.DesiredState) -> Record:
        record = self.records.get(instance_id)
        if record is None or instance_id not in self.desired():
            raise NotFound(f"instance {instance_id} is not on this node")
        record.override = state
        self._persist(record)
        if state == "running" and record.state in (S.FAILED, S.STOPPED):
            record.restarts = 0
            record.completed = False
            record.restart_at = None
            self._transition(record, S.PENDING, reason="start requested")
        self.wake()
        return record

    def remove(self, instance_id: uuid.UUID) -> None:
        record = self.records.get(instance_id)
        if record is None:
            raise NotFound(f"instance {instance_id} is not on this node")
        self.local.pop(instance_id, None)
        record.override = "terminated"
        self._persist(record)
        self.wake()

    def _wants(self) -> dict[uuid.UUID, planning.Want]:
        wants: dict[uuid.UUID, planning.Want] = {}
        for instance_id, assignment in self.desired().items():
            record = self.records.get(instance_id)
            override = record.override if record is not None else None
            state = override or assignment.desired_state
            wants[instance_id] = planning.Want(
                state=state, restart_policy=assignment.restart_policy
            )
        return wants

    # -- views -------------------------------------------------------------------------
    def used(self, *, excluding: uuid.UUID | None = None) -> Resources:
        total = ZERO
        for record in self.records.values():
            if record.instance_id != excluding and record.state in (*ACTIVE, S.PENDING):
                total = total + record.resources
        return total

    def _check_capacity(self, instance_id: uuid.UUID, needed: Resources) -> None:
        free = self.capacity - self.used(excluding=instance_id)
        if not needed.fits_in(Resources(free.millicpu, free.memory_mib, needed.disk_mib)):
            missing = needed.shortfall(free)
            raise InsufficientCapacity(
                f"the node lacks {', '.join(f'{k} {v}' for k, v in missing.items())} "
                f"for instance {instance_id}",
                extra={"missing": missing},
            )

    def statuses(self) -> list[InstanceStatus]:
        return [self._status(record) for _, record in sorted(self.records.items())]

    def _status(self, record: Record) -> InstanceStatus:
        return record.status(self.health.health(record.instance_id))

    def wake(self) -> None:
        self._wake.set()

    # -- persistence and reports ---------------------------------------------------------
    def _persist(self, record: Record) -> None:
        # written in a thread, in order per instance (``StateStore.queue_save``)
        self.store.queue_save(record.instance_id, record.to_json())

    def _transition(
        self,
        record: Record,
        state: InstanceState,
        *,
        reason: str | None = None,
        exit_code: int | None = None,
        oom_killed: bool = False,
        log_tail: list[str] | None = None,
    ) -> None:
        record.state = state
        record.reason = reason
        record.exit_code = exit_code
        record.oom_killed = oom_killed
        record.log_tail = list(log_tail or [])
        self._persist(record)
        self._follow_health(record)
        log.info(
            "instance.state",
            instance_id=str(record.instance_id),
            state=state.value,
            reason=reason,
            exit_code=exit_code,
            oom_killed=oom_killed,
            ip_address=record.address,
        )
        self._send_report(record)

    def _send_report(self, record: Record) -> None:
        status = self._status(record)
        self._report(
            record.instance_id,
            InstanceStatusReport(
                state=status.state,
                ip_address=status.ip_address,
                port=status.port,
                exit_code=status.exit_code,
                oom_killed=status.oom_killed,
                reason=status.reason,
                log_tail=status.log_tail,
                health=status.health,
            ),
        )

    # -- health --------------------------------------------------------------------------
    def _follow_health(self, record: Record) -> None:
        """Check a running instance (from its start, once per run); forget the others."""
        instance_id = record.instance_id
        if record.state != S.RUNNING or record.address is None or not record.alive:
            self.health.forget(instance_id)
            record.liveness_failed = None
            return
        if not self.health.watching(instance_id):
            self.health.watch(
                instance_id,
                check=record.assignment.health_check,
                default_port=record.assignment.default_port,
                address=record.address,
                started_at=record.started_at if record.started_at is not None else time.monotonic(),
            )

    def _health_changed(self, instance_id: uuid.UUID, health: InstanceHealth) -> None:
        record = self.records.get(instance_id)
        if record is not None and record.state == S.RUNNING:
            self._send_report(record)  # at once: the operator moves the route on it

    def _liveness_failed(self, instance_id: uuid.UUID, reason: str) -> None:
        record = self.records.get(instance_id)
        if record is not None and record.state == S.RUNNING:
            record.liveness_failed = reason
            self.wake()

    # -- recovery ----------------------------------------------------------------------
    async def recover(self) -> list[str]:
        """Load the records, let the driver re-adopt what still runs, clean up the rest.

        Nothing that runs is stopped and nothing is started here; the first tick decides
        about the dead ones (restart per policy), like for any exit."""
        for instance_id, raw in self.store.load_all().items():
            try:
                loaded = Record.from_json(raw)
                self.records[instance_id] = loaded
                if loaded.source == "local" and loaded.override != "terminated":
                    self.local[instance_id] = loaded.assignment
            except (KeyError, ValueError, TypeError) as exc:
                log.warning(
                    "instance.record_unreadable", instance_id=str(instance_id), error=str(exc)
                )
                self.store.delete(instance_id)
        handles = [r.handle for r in self.records.values() if r.handle is not None]
        recovered = await self.driver.recover(handles)
        alive = {handle.instance_id for handle in recovered.running}
        now = time.monotonic()
        for record in self.records.values():
            if record.instance_id in alive:
                record.alive = True
                record.started_at = now
                self.images.adopt(record.assignment.image.digest)
                if record.state != S.RUNNING:
                    self._transition(record, S.RUNNING, reason="re-adopted after agent restart")
                else:
                    self._follow_health(record)
                log.info("instance.adopted", instance_id=str(record.instance_id))
            elif record.handle is not None:
                # it died while the agent was away: the driver cleaned it; decide next tick
                record.alive = False
                record.exit_code = None
                if record.state not in (S.RUNNING, S.STARTING):
                    record.handle = None
        keep = {i for i, r in self.records.items() if r.address is not None and r.state in ACTIVE}
        cleaned = list(recovered.cleaned)
        cleaned += await self.network.cleanup(keep=keep | alive)
        for record in self.records.values():
            if record.instance_id not in keep | alive:
                record.address = None
        return cleaned

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Reconcile forever (cancel to stop; running instances are left alone)."""
        housekeeping_every = 10.0
        last_housekeeping = 0.0
        while True:
            await self.reconcile_once()
            if time.monotonic() - last_housekeeping >= housekeeping_every:
                last_housekeeping = time.monotonic()
                await self._housekeeping()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick)

    async def _housekeeping(self) -> None:
        if isinstance(self.driver, SupportsHousekeeping):
            handles = [r.handle for r in self.records.values() if r.handle is not None]
            try:
                await self.driver.housekeeping(handles)
            except (OSError, ZeitworkError) as exc:
                log.warning("driver.housekeeping_failed", error=str(exc))

    async def observe(self) -> None:
        for record in list(self.records.values()):
            if record.busy or record.handle is None or record.state not in ACTIVE:
                continue
            try:
                status = await self.driver.inspect(record.handle)
            except ZeitworkError as exc:
                log.warning(
                    "instance.inspect_failed", instance_id=str(record.instance_id), error=exc.detail
                )
                continue
            was_alive = record.alive
            record.alive = status.phase in (Phase.RUNNING, Phase.CREATED)
            if was_alive and not record.alive:
                self.health.forget(record.instance_id)
                record.exit_code = status.exit_code
                record.oom_killed = status.oom_killed
                record.reason = status.message
                log.info(
                    "instance.exited",
                    instance_id=str(record.instance_id),
                    exit_code=status.exit_code,
                    oom_killed=status.oom_killed,
                )

    async def reconcile_once(self) -> None:
        await self.observe()
        seen = {
            instance_id: planning.Seen(
                state=record.state,
                busy=record.busy,
                alive=record.alive,
                has_handle=record.handle is not None,
                exit_code=record.exit_code,
                oom_killed=record.oom_killed,
                restarts=record.restarts,
                restart_at=record.restart_at,
                started_at=record.started_at,
                completed=record.completed,
                liveness_failed=record.liveness_failed is not None,
            )
            for instance_id, record in self.records.items()
        }
        wants = self._wants()
        for instance_id, want in wants.items():
            record = self.records.get(instance_id)
            if record is not None and record.completed and want.state != "running":
                record.completed = False  # asked to stop: a later "running" starts it again
        actions = planning.plan(wants, seen, now=time.monotonic(), tuning=self.tuning)
        for action in actions:
            await self._apply(action)

    async def _apply(self, action: planning.Action) -> None:
        instance_id = action.instance_id
        record = self.records.get(instance_id)
        if isinstance(action, planning.Start):
            if record is None:
                assignment = self.desired()[instance_id]
                record = Record(
                    assignment=assignment,
                    source="local" if instance_id in self.local else "operator",
                )
                self.records[instance_id] = record
            self._spawn(record, self._start(record), "start")
        elif record is None:
            if isinstance(action, planning.Settle):
                record = Record(assignment=self.desired()[instance_id])
                self.records[instance_id] = record
                self._transition(record, action.state, reason=action.reason)
        elif isinstance(action, planning.Stop):
            self._spawn(record, self._stop(record), "stop")
        elif isinstance(action, planning.Remove):
            self._spawn(record, self._remove(record), "remove")
        elif isinstance(action, planning.ScheduleRestart):
            self._spawn(record, self._schedule_restart(record, action), "restart")
        elif isinstance(action, planning.Settle):
            self._spawn(record, self._settle(record, action), "settle")
        elif isinstance(action, planning.MarkStable):
            record.restarts = 0
            self._persist(record)
        elif isinstance(action, planning.RestartUnhealthy):
            self._spawn(record, self._restart_unhealthy(record, action), "restart")

    def _spawn(self, record: Record, work: Any, what: str) -> None:
        record.busy = True

        async def run() -> None:
            try:
                await work
            except Exception as exc:  # report, never kill the loop over one instance
                log.exception(
                    "instance.action_crashed", action=what, instance_id=str(record.instance_id)
                )
                with contextlib.suppress(Exception):
                    self._transition(record, S.FAILED, reason=f"agent error during {what}: {exc}")
            finally:
                record.busy = False
                self.wake()

        task = asyncio.create_task(run(), name=f"{what}-{record.instance_id.hex[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _last_lines(self, handle: Handle | None) -> list[str]:
        if handle is None:
            return []
        try:
            return [line async for line in self.driver.logs(handle, tail=self.log_tail_lines)]
        except (OSError, ZeitworkError):
            return []

    async def _start(self, record: Record) -> None:
        assignment = record.assignment
        instance_id = record.instance_id
        if record.state != S.STARTING:
            self._transition(record, S.STARTING)
        record.restart_at = None
        record.liveness_failed = None
        try:
            self._check_capacity(instance_id, record.resources)
            if record.handle is not None:  # an earlier run's leftovers
                await self.driver.destroy(record.handle)
                record.handle = None
            began = time.perf_counter()
            image = await self.images.ensure(assignment.image)
            image_done = time.perf_counter()
            try:
                process = image.process(assignment.environment_variables)
                argv = list(assignment.command) if assignment.command else list(process.argv)
                attachment = self.network.attachment(instance_id) or await self.network.attach(
                    instance_id
                )
                record.address = attachment.address
                self._persist(record)
                spec = InstanceSpec(
                    instance_id=instance_id,
                    image_digest=assignment.image.digest,
                    rootfs=image.rootfs,
                    layers=image.layers,
                    process=ProcessSpec(
                        argv=argv,
                        env=dict(process.env),
                        cwd=process.cwd,
                        user=process.user,
                    ),
                    vcpu=assignment.resources.vcpu,
                    memory_mib=assignment.resources.memory,
                    port=assignment.default_port,
                    network=attachment,
                )
                network_done = time.perf_counter()
                handle = await self.driver.start(spec)
                runtime_done = time.perf_counter()
            except BaseException:
                self.images.release(assignment.image.digest)
                raise
        except ServiceUnavailable as exc:
            # transient (operator or image download): try again with back-off
            record.exit_code = None
            record.alive = False
            record.restarts += 1
            delay = planning.backoff(
                record.restarts, base=self.tuning.backoff_base, cap=self.tuning.backoff_cap
            )
            if record.restarts > self.tuning.max_restarts:
                await self._fail_start(
                    record, f"{exc.detail}; gave up after {record.restarts - 1} retries"
                )
                return
            record.restart_at = time.monotonic() + delay
            self._transition(record, S.STARTING, reason=f"{exc.detail}; retrying in {delay:.1f}s")
            return
        except (InsufficientCapacity, InvalidInput, NotFound, ZeitworkError) as exc:
            await self._fail_start(record, exc.detail)
            return
        except OSError as exc:
            await self._fail_start(record, f"start failed: {exc}")
            return
        self.starts += 1
        record.handle = handle
        record.alive = True
        record.started_at = time.monotonic()
        self._persist(record)
        await self._wait_listening(record)
        log.info(
            "instance.start_timings",
            instance_id=str(instance_id),
            image_ms=round((image_done - began) * 1000, 1),
            network_ms=round((network_done - image_done) * 1000, 1),
            runtime_ms=round((runtime_done - network_done) * 1000, 1),
            listen_ms=round((time.perf_counter() - runtime_done) * 1000, 1),
        )
        if record.alive and record.state == S.STARTING:
            self._transition(record, S.RUNNING)

    async def _fail_start(self, record: Record, reason: str) -> None:
        lines = await self._last_lines(record.handle)
        if record.handle is not None:
            with contextlib.suppress(ZeitworkError, OSError):
                await self.driver.destroy(record.handle)
            record.handle = None
        await self.network.detach(record.instance_id)
        record.address = None
        record.alive = False
        self._transition(record, S.FAILED, reason=reason, log_tail=lines)

    async def _wait_listening(self, record: Record) -> None:
        """Until the instance accepts TCP on its port, it exits, or the timeout passes."""
        address, port = record.address, record.assignment.default_port
        if address is None or record.handle is None:
            return
        began = time.monotonic()
        deadline = began + self.ready_timeout
        delay = 0.005
        told = False
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1.0)
            except (OSError, TimeoutError) as exc:
                if not told and time.monotonic() - began >= _TELL_NOT_LISTENING_AFTER:
                    # say why it is not running yet (the operator's rollout shows it)
                    told = True
                    why = (
                        "connection refused"
                        if isinstance(exc, ConnectionRefusedError)
                        else ("timed out" if isinstance(exc, TimeoutError) else str(exc))
                    )
                    record.reason = f"not listening on port {port} yet ({why})"
                    self._persist(record)
                    self._send_report(record)
                status = await self.driver.inspect(record.handle)
                if status.phase not in (Phase.RUNNING, Phase.CREATED):
                    # exited before it listened: the next tick decides (restart policy)
                    record.alive = False
                    record.exit_code = status.exit_code
                    record.oom_killed = status.oom_killed
                    record.reason = status.message
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        record.reason = f"not listening on port {port} after {self.ready_timeout:.0f}s"

    async def _stop(self, record: Record) -> None:
        self._transition(record, S.STOPPING)
        exit_code: int | None = None
        oom = False
        lines: list[str] = []
        if record.handle is not None:
            status = await self.driver.stop(
                record.handle, grace_seconds=record.stop_timeout(self.stop_grace)
            )
            exit_code, oom = status.exit_code, status.oom_killed
            lines = await self._last_lines(record.handle)
            await self._discard_workload(record)
        await self.network.detach(record.instance_id)
        record.address = None
        record.alive = False
        record.restart_at = None
        self._transition(
            record, S.STOPPED, reason="stopped", exit_code=exit_code, oom_killed=oom, log_tail=lines
        )

    async def _remove(self, record: Record) -> None:
        if record.state in ACTIVE or record.handle is not None:
            await self._stop(record)
        self._transition(record, S.TERMINATED, reason="removed from this node")
        self.records.pop(record.instance_id, None)
        self.store.queue_delete(record.instance_id)  # after the queued terminated save

    async def _discard_workload(self, record: Record) -> None:
        """Destroy the instance's workload, if it has one, and release its image."""
        if record.handle is not None:
            await self.driver.destroy(record.handle)
            self.images.release(record.assignment.image.digest)
            record.handle = None

    async def _exit_details(self, record: Record) -> tuple[list[str], str]:
        lines = await self._last_lines(record.handle)
        what = planning.describe_exit(record.exit_code, record.oom_killed)
        return lines, what

    async def _schedule_restart(self, record: Record, action: planning.ScheduleRestart) -> None:
        lines, what = await self._exit_details(record)
        exit_code, oom = record.exit_code, record.oom_killed
        await self._discard_workload(record)
        failed = planning.failed_run(exit_code, oom)
        record.restarts = action.attempt if failed else record.restarts
        record.restart_at = time.monotonic() + action.delay
        self._transition(
            record,
            S.STARTING,
            reason=f"{what}; restart {action.attempt} in {action.delay:.1f}s",
            exit_code=exit_code,
            oom_killed=oom,
            log_tail=lines,
        )

    async def _restart_unhealthy(self, record: Record, action: planning.RestartUnhealthy) -> None:
        """Liveness: stop it (SIGTERM, SIGKILL after its stop timeout), give it a fresh
        network attachment (its old one may be what broke), start it again after the
        back-off, as after a failed run; or leave it failed (restart policy ``never``)."""
        reason = record.liveness_failed or "health check failed"
        record.liveness_failed = None
        # running -> starting at once (the state machine has no stopping -> starting)
        record.restart_at = None
        self._transition(record, S.STARTING, reason=f"restarting: {reason}")
        exit_code: int | None = None
        oom = False
        if record.handle is not None:
            status = await self.driver.stop(
                record.handle, grace_seconds=record.stop_timeout(self.stop_grace)
            )
            exit_code, oom = status.exit_code, status.oom_killed
        lines = await self._last_lines(record.handle)
        await self._discard_workload(record)
        await self.network.detach(record.instance_id)
        record.address = None
        record.alive = False
        if not action.restart:
            record.restart_at = None
            self._transition(
                record,
                S.FAILED,
                reason=f"{reason}; not restarted (restart policy never)",
                exit_code=exit_code,
                oom_killed=oom,
                log_tail=lines,
            )
            return
        record.restarts += 1
        if record.restarts > self.tuning.max_restarts:
            record.restart_at = None
            self._transition(
                record,
                S.FAILED,
                reason=f"crash loop: {reason}; gave up after {record.restarts - 1} restarts",
                exit_code=exit_code,
                oom_killed=oom,
                log_tail=lines,
            )
            return
        delay = planning.backoff(
            record.restarts, base=self.tuning.backoff_base, cap=self.tuning.backoff_cap
        )
        record.restart_at = time.monotonic() + delay
        self._transition(
            record,
            S.STARTING,
            reason=f"restarted: {reason}; restart {record.restarts} in {delay:.1f}s",
            exit_code=exit_code,
            oom_killed=oom,
            log_tail=lines,
        )

    async def _settle(self, record: Record, action: planning.Settle) -> None:
        lines, what = await self._exit_details(record)
        exit_code, oom = record.exit_code, record.oom_killed
        await self._discard_workload(record)
        await self.network.detach(record.instance_id)
        record.address = None
        record.restart_at = None
        if action.reason != "stopped as requested" and action.state == S.STOPPED:
            record.completed = True
        keep_reason = action.state == record.state and action.reason is None
        self._transition(
            record,
            action.state,
            reason=record.reason if keep_reason else action.reason or what,
            exit_code=exit_code,
            oom_killed=oom,
            log_tail=lines,
        )

    # -- API helpers -------------------------------------------------------------------
    async def logs(
        self, instance_id: uuid.UUID, *, tail: int, follow: bool
    ) -> AsyncIterator[LogEntry]:
        """The instance's output as entries (with write time and stream where its driver
        records them; the last lines of an ended run when no workload is left)."""
        record = self.records.get(instance_id)
        if record is None:
            raise NotFound(f"instance {instance_id} is not on this node")
        if follow:  # a starting instance: wait (bounded) for its workload to exist
            deadline = time.monotonic() + self.ready_timeout
            while (  # noqa: ASYNC110 (no event for this; a short poll)
                record.handle is None
                and record.state in (S.PENDING, S.STARTING)
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.02)
        if record.handle is None:
            for line in record.log_tail[-tail:] if tail else []:
                yield LogEntry(text=line)
            return
        if isinstance(self.driver, SupportsLogEntries):
            async for entry in self.driver.log_entries(record.handle, tail=tail, follow=follow):
                yield entry
            return
        async for line in self.driver.logs(record.handle, tail=tail, follow=follow):
            yield LogEntry(text=line)

    async def drain(self) -> None:
        """Stop every instance (``--drain``), waiting for in-flight work first."""
        await self.settle_tasks()
        for record in list(self.records.values()):
            if record.state in ACTIVE or record.handle is not None:
                record.busy = True
                try:
                    await self._stop(record)
                finally:
                    record.busy = False
        await self.store.flush()

    def longest_stop(self) -> float:
        """The longest stop timeout of this node's instances (how long a stop may take)."""
        return max(
            (r.stop_timeout(self.stop_grace) for r in self.records.values()),
            default=self.stop_grace if self.stop_grace is not None else 10.0,
        )

    async def settle_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.health.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.store.flush()  # the last states reach the disk before the agent exits
