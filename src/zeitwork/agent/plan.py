"""Reconcile decisions, pure: desired instances + what runs -> a list of actions.

The supervisor observes (inspects its instances), calls ``plan`` and applies the actions;
nothing here does I/O, so every case is unit-tested.

Restart policies: ``always`` restarts after any exit, ``on-failure`` after a non-zero exit
or an OOM kill, ``never`` does not restart. Restarts wait an exponential back-off
(``base * 2**n`` up to ``cap``); after ``max_restarts`` consecutive failed runs the instance
ends ``failed`` with the reason (crash loop). A run that lasted ``stable_after`` seconds
resets the count. A running instance that had been healthy and then failed its health
checks (liveness) is stopped and restarted the same way (``never``: it ends ``failed``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from zeitwork.core.states import InstanceState

DesiredState = Literal["running", "stopped", "terminated"]
RestartPolicy = Literal["always", "on-failure", "never"]
S = InstanceState


@dataclass(frozen=True, slots=True)
class Tuning:
    max_restarts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    stable_after: float = 60.0


@dataclass(frozen=True, slots=True)
class Want:
    """What the operator (or the local API) wants for one instance."""

    state: DesiredState
    restart_policy: RestartPolicy = "always"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the supervisor knows of one instance it has a record of."""

    state: InstanceState
    busy: bool = False  # a start/stop/remove is in flight
    alive: bool = False  # the workload's process is running (last inspection)
    has_handle: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    restarts: int = 0  # consecutive failed runs
    restart_at: float | None = None  # when a scheduled restart is due (monotonic)
    started_at: float | None = None  # when the current run began (monotonic)
    completed: bool = False  # ended by itself under its restart policy: stays ended
    liveness_failed: bool = False  # it had been healthy, then failed its health checks


@dataclass(frozen=True, slots=True)
class Start:
    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Stop:
    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Remove:
    """Not wanted any more: stop, destroy, release the address, forget the record."""

    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    instance_id: uuid.UUID
    delay: float
    attempt: int  # 1-based number of this restart


@dataclass(frozen=True, slots=True)
class Settle:
    """The workload has exited (or never ran) and will not run again by itself."""

    instance_id: uuid.UUID
    state: InstanceState  # stopped or failed
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class MarkStable:
    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RestartUnhealthy:
    """Liveness: stop a running instance that failed its health checks, then start it
    again (``restart``) or leave it failed (restart policy ``never``)."""

    instance_id: uuid.UUID
    restart: bool = True


Action = Start | Stop | Remove | ScheduleRestart | Settle | MarkStable | RestartUnhealthy


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Delay before restart number ``attempt`` (1-based): base, 2*base, 4*base, ... <= cap."""
    if attempt < 1:
        return 0.0
    return float(min(cap, base * (2 ** min(attempt - 1, 62))))


def failed_run(exit_code: int | None, oom_killed: bool) -> bool:
    return oom_killed or exit_code != 0


def describe_exit(exit_code: int | None, oom_killed: bool) -> str:
    if oom_killed:
        return "killed: out of memory (OOM)"
    if exit_code is None:
        return "exited (exit status unknown)"
    return f"exited with code {exit_code}"


def after_exit(instance_id: uuid.UUID, want: Want, seen: Seen, tuning: Tuning) -> Action:
    """The workload of a wanted-running instance has exited: restart, stop or fail."""
    failed = failed_run(seen.exit_code, seen.oom_killed)
    what = describe_exit(seen.exit_code, seen.oom_killed)
    restart = want.restart_policy == "always" or (want.restart_policy == "on-failure" and failed)
    if not restart:
        return Settle(instance_id, S.FAILED if failed else S.STOPPED, what)
    attempt = seen.restarts + 1 if failed else seen.restarts
    if failed and seen.restarts >= tuning.max_restarts:
        return Settle(
            instance_id,
            S.FAILED,
            f"crash loop: {what}; gave up after {seen.restarts} restarts",
        )
    delay = backoff(max(attempt, 1), base=tuning.backoff_base, cap=tuning.backoff_cap)
    return ScheduleRestart(instance_id, delay=delay, attempt=max(attempt, 1))


def decide(
    instance_id: uuid.UUID, want: Want | None, seen: Seen | None, *, now: float, tuning: Tuning
) -> Action | None:
    """The one next step for one instance (None: nothing to do now)."""
    if seen is None:
        if want is None or want.state == "terminated":
            return None
        if want.state == "running":
            return Start(instance_id)
        return Settle(instance_id, S.STOPPED, None)
    if seen.busy:
        return None
    if want is None or want.state == "terminated":
        return Remove(instance_id)
    exited = seen.state in (S.RUNNING, S.STARTING) and seen.has_handle and not seen.alive
    if want.state == "stopped":
        if seen.state in (S.RUNNING, S.STARTING, S.STOPPING):
            if seen.state == S.STOPPING or (seen.has_handle and seen.alive):
                return Stop(instance_id)
            return Settle(instance_id, S.STOPPED, "stopped as requested")
        if seen.state == S.PENDING:
            return Settle(instance_id, S.STOPPED, "stopped as requested")
        if seen.has_handle:  # a leftover workload of a stopped/failed instance: remove it
            return Settle(instance_id, seen.state, None)
        return None
    # wanted running
    if seen.state == S.STOPPING:
        return Stop(instance_id)  # an interrupted stop: finish it, then start again
    if exited:
        return after_exit(instance_id, want, seen, tuning)
    if seen.state == S.RUNNING and seen.alive and seen.liveness_failed:
        return RestartUnhealthy(instance_id, restart=want.restart_policy != "never")
    if seen.state == S.RUNNING and seen.alive:
        stable = seen.started_at is not None and now - seen.started_at >= tuning.stable_after
        return MarkStable(instance_id) if stable and seen.restarts > 0 else None
    if seen.state == S.STARTING and seen.restart_at is not None:
        return Start(instance_id) if now >= seen.restart_at else None
    if seen.state == S.STOPPED and seen.completed:
        return Settle(instance_id, S.STOPPED, None) if seen.has_handle else None
    if seen.state in (S.PENDING, S.STARTING, S.STOPPED, S.RUNNING):
        return Start(instance_id)
    if seen.has_handle:  # failed, but something of it is left: remove that, stay failed
        return Settle(instance_id, seen.state, None)
    return None  # failed: stays failed until asked again


def plan(
    wanted: Mapping[uuid.UUID, Want],
    seen: Mapping[uuid.UUID, Seen],
    *,
    now: float,
    tuning: Tuning,
) -> list[Action]:
    """Every instance's next step, in a stable order (by id)."""
    actions: list[Action] = []
    for instance_id in sorted(set(wanted) | set(seen)):
        action = decide(
            instance_id, wanted.get(instance_id), seen.get(instance_id), now=now, tuning=tuning
        )
        if action is not None:
            actions.append(action)
    return actions
