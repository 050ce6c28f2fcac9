"""One instance as the rollout planner reads it, pure: live, healthy, in the route,
ready, on a node taking no new work; why it fails its release, in words; and the back-off
before the current release's instances are placed again after failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zeitwork.core.states import HealthState, InstanceState

if TYPE_CHECKING:
    from zeitwork.operator.reconcile.rollout_view import ReplicaView

BACKOFF_CAP = 60.0  # s: the longest wait before placing again after failures
FAILURE_WINDOW = 600.0  # s: failures older than this do not count for the back-off
LOG_LINES = 20  # log lines of a failed instance quoted in the cause


def backoff_delay(failures: int) -> float:
    """Seconds to wait before placing again after ``failures`` recent failures:
    ``1, 2, 4, ... 60`` (0 without failures)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, 2.0 ** min(failures - 1, 16))


def backoff_until(failures: tuple[float, ...], now: float) -> float | None:
    """When placing may resume after the failures of the last ten minutes (None: now)."""
    recent = [t for t in failures if now - FAILURE_WINDOW <= t <= now]
    if not recent:
        return None
    until = max(recent) + backoff_delay(len(recent))
    return until if until > now else None


def failure_cause(instance: ReplicaView, version: int, *, healthy_deadline: float) -> str:
    """Why ``instance`` fails its release, readable, followed by up to the last 20 log lines."""
    head = f"instance {short_id(instance)} of v{version}"
    if has_ended(instance):
        what = ended_phrase(instance)
    elif instance.exit_code is not None or instance.oom_killed:
        # it ran and exited, and its agent keeps restarting it (a crash loop in progress)
        what = (
            f"not healthy {healthy_deadline:g} s after it was placed: it keeps exiting; "
            f"its last run {ended_phrase(instance)}"
        )
    else:
        what = (
            f"not healthy {healthy_deadline:g} s after it was placed ({last_check_text(instance)})"
        )
    return with_logs(f"{head} {what}", instance.log_tail)


_NOT_LIVE = frozenset({InstanceState.FAILED, InstanceState.STOPPED, InstanceState.TERMINATED})
_ENDED = frozenset({InstanceState.FAILED, InstanceState.STOPPED})
_OUR_KILL_CODES = frozenset({137, 143})  # SIGKILL / SIGTERM after a failed liveness check


def is_live(i: ReplicaView) -> bool:
    return i.desired_state == "running" and i.state not in _NOT_LIVE


def has_ended(i: ReplicaView) -> bool:
    """Wanted running but ended for good (the agent reports failed/stopped once its
    restart policy gave up)."""
    return i.desired_state == "running" and i.state in _ENDED


def is_healthy(i: ReplicaView) -> bool:
    """Running and healthy as last reported (never on a node that is down)."""
    return i.state == InstanceState.RUNNING and i.health == HealthState.HEALTHY and not i.node_down


def in_route(i: ReplicaView) -> bool:
    """Listed by the route table: serving, running, healthy, not draining."""
    return i.serving and i.drain_started_at is None and is_healthy(i)


def is_leaving(i: ReplicaView) -> bool:
    """On a node that takes no new work (an instance not on a node yet is not)."""
    return i.node_id is not None and (i.node_down or not i.node_schedulable)


def ready_at(i: ReplicaView, min_healthy_time: float) -> float | None:
    """When ``i`` has been healthy for ``min_healthy_time`` (None: not healthy)."""
    if not is_healthy(i) or i.healthy_since is None:
        return None
    return i.healthy_since + min_healthy_time


def by_age(i: ReplicaView) -> tuple[float, str]:
    return (i.created_at, str(i.id))


def last_check_text(i: ReplicaView) -> str:
    if i.last_check:
        return f"last check: {i.last_check}"
    if i.reason:
        return f"{i.state.value}: {i.reason}"
    return f"{i.state.value}, no health check result yet"


def ended_phrase(i: ReplicaView) -> str:
    failed_check = i.health == HealthState.UNHEALTHY and bool(i.last_check)
    if i.oom_killed:
        phrase = "was killed: out of memory"
    elif failed_check and (i.exit_code is None or i.exit_code in _OUR_KILL_CODES):
        phrase = f"failed its health check: {i.last_check}"
    elif i.exit_code is not None:
        phrase = f"exited with code {i.exit_code}"
    elif i.reason:
        return f"failed: {i.reason}"
    else:
        phrase = "failed" if i.state == InstanceState.FAILED else "stopped by itself"
    extra = _beyond(i.reason or "", phrase)
    return f"{phrase} ({extra})" if extra else phrase


def _beyond(reason: str, phrase: str) -> str:
    """What the agent's ``reason`` says beyond ``phrase`` (its own wording of the exit
    taken out): ``crash loop: exited with code 1; gave up after 5 restarts`` -> ``crash
    loop: gave up after 5 restarts``."""
    for said in (phrase, "killed: out of memory (OOM)"):
        reason = reason.replace(f"{said}; ", "").replace(said, "")
    return reason.strip(" ;:")


def with_logs(text: str, log_tail: tuple[str, ...]) -> str:
    lines = log_tail[-LOG_LINES:]
    if not lines:
        return text
    return text + "\nlast log lines:\n" + "\n".join(lines)


def short_id(i: ReplicaView) -> str:
    return str(i.id)[:8]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
