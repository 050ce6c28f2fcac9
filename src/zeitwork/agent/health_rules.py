"""Health-check decisions, pure: one check result in, the instance's new health out.

Readiness: an instance is ``healthy`` once ``healthy_threshold`` checks in a row passed.
Liveness: ``unhealthy_threshold`` failures in a row make it ``unhealthy``; if it had been
healthy since its start, the agent restarts it. Failures within ``grace_period`` seconds
of a start do not count, but only until the instance first passes (a check that succeeds
ends the grace period early, as Docker's ``--start-period`` does), so an instance that was
serving and breaks is taken out of the route at once, grace period or not.

``type: none`` instances are healthy once they run. The supervisor and ``health.py`` call
these functions; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zeitwork.core.states import HealthState
from zeitwork.wire.health import DEFAULT_HEALTH_CHECK, HealthCheck, HealthResult, InstanceHealth

H = HealthState


@dataclass(frozen=True, slots=True)
class Tracker:
    """What the checks of one run of an instance have seen so far."""

    state: HealthState = H.UNKNOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    was_healthy: bool = False  # passed (healthy_threshold times) at least once in this run
    last: HealthResult | None = None

    def report(self) -> InstanceHealth:
        return InstanceHealth(
            state=self.state,
            last=self.last,
            consecutive_failures=self.consecutive_failures,
            consecutive_successes=self.consecutive_successes,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    tracker: Tracker
    changed: bool  # the health state differs from before this result
    restart: bool  # liveness failed: restart the instance now
    reason: str | None = None  # why, when ``restart`` (or when it turned unhealthy)


def effective_check(check: HealthCheck | None, default_port: int) -> tuple[HealthCheck, int]:
    """The check to run and the port it runs on (None: tcp on the app's port)."""
    chosen = check if check is not None else DEFAULT_HEALTH_CHECK
    return chosen, chosen.port if chosen.port is not None else default_port


def in_grace(check: HealthCheck, *, started_at: float, now: float) -> bool:
    return now - started_at < check.grace_period


def initial(check: HealthCheck) -> Tracker:
    """The health of a run that just began (``none``: healthy at once)."""
    if check.type == "none":
        return Tracker(state=H.HEALTHY, was_healthy=True)
    return Tracker()


def failure_reason(failures: int, detail: str) -> str:
    times = "once" if failures == 1 else f"{failures} times"
    return f"health check failed {times}: {detail}" if detail else f"health check failed {times}"


def observe(tracker: Tracker, result: HealthResult, *, check: HealthCheck, grace: bool) -> Verdict:
    """Fold one check ``result`` into ``tracker``. ``grace``: the run is still within its
    grace period (failures there do not count until the instance first passed)."""
    if check.type == "none":
        return Verdict(replace(initial(check), last=result), changed=False, restart=False)
    before = tracker.state
    if result.ok:
        successes = tracker.consecutive_successes + 1
        healthy = successes >= check.healthy_threshold
        state = H.HEALTHY if healthy else before
        if before == H.UNHEALTHY and not healthy:
            state = H.UNHEALTHY  # stays out of the route until the threshold is met again
        updated = Tracker(
            state=state,
            consecutive_failures=0,
            consecutive_successes=successes,
            was_healthy=tracker.was_healthy or healthy,
            last=result,
        )
        return Verdict(updated, changed=state != before, restart=False)
    if grace and not tracker.was_healthy:
        # starting up: not counted (the instance is not in the route yet anyway)
        updated = replace(tracker, consecutive_successes=0, last=result)
        return Verdict(updated, changed=False, restart=False)
    failures = tracker.consecutive_failures + 1
    unhealthy = failures >= check.unhealthy_threshold
    state = H.UNHEALTHY if unhealthy else before
    if before == H.HEALTHY and not unhealthy:
        state = H.HEALTHY  # one failure is not yet enough to leave the route
    updated = Tracker(
        state=state,
        consecutive_failures=failures,
        consecutive_successes=0,
        was_healthy=tracker.was_healthy,
        last=result,
    )
    restart = unhealthy and tracker.was_healthy
    reason = failure_reason(failures, result.detail) if unhealthy else None
    return Verdict(updated, changed=state != before, restart=restart, reason=reason)


def http_detail(path: str, status: int) -> str:
    return f"GET {path} -> {status}"


def seconds(value: float) -> str:
    """``2``, ``0.5``: a duration as people write it."""
    return f"{value:g}"
