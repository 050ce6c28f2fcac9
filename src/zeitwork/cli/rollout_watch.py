"""What ``zeitwork deploy`` prints while a release rolls out, and when it is done. Pure.

Two sources feed it: the rollout's events (as they happen) and snapshots of the app's status
(polled, and the only source when the event stream is unavailable). Each instance moves
through ``placed -> starting -> healthy -> serving`` (new ones) and ``draining -> stopping ->
stopped`` (old ones); a line is printed when an instance reaches a later phase than the one
last printed, whichever source saw it first, so the two never print a step twice or out of
order. Failures (unhealthy, exited, failed) print whenever their detail changes. The outcome
comes from the release itself: active is success, failed or superseded is failure.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from zeitwork.core.states import HealthState, InstanceState, ReleaseState, RolloutState
from zeitwork.wire.releases import AppStatus, EventOut, InstanceBrief, ReleaseOut

PHASES = ("placed", "starting", "healthy", "serving", "draining", "stopping", "stopped")
FAILURES = ("unhealthy", "exited", "failed")

_EVENT_PHASES = {
    "instance.placed": "placed",
    "instance.starting": "starting",
    "instance.started": "starting",
    "instance.running": "starting",
    "instance.healthy": "healthy",
    "instance.serving": "serving",
    "instance.draining": "draining",
    "instance.stopping": "stopping",
    "instance.stopped": "stopped",
    "instance.terminated": "stopped",
    "instance.unhealthy": "unhealthy",
    "instance.exited": "exited",
    "instance.oom_killed": "exited",
    "instance.failed": "failed",
}


def concerns(event: EventOut, release: ReleaseOut) -> bool:
    """Whether an event of the app's environment is about ``release``'s rollout: recorded
    with or after the release, and of its rollout, of it, or of the release it replaces
    (an instance's own reports carry its release, not the rollout)."""
    if event.created_at < release.created_at:
        return False
    rollout = release.rollout
    if rollout is not None and event.rollout_id == rollout.id:
        return True
    if event.release_id is None:
        return False
    return event.release_id == release.id or (
        rollout is not None and event.release_id == rollout.from_release_id
    )


def phase_of(instance: InstanceBrief) -> tuple[str, str]:
    """An instance's phase in a status snapshot, and the detail worth printing with it."""
    state = instance.state
    if state == InstanceState.PENDING:
        return "placed", ""
    if state == InstanceState.STARTING:
        return "starting", ""
    if state == InstanceState.STOPPING:
        return "stopping", ""
    if state in (InstanceState.STOPPED, InstanceState.TERMINATED):
        return "stopped", ""
    if state == InstanceState.FAILED:
        code = f"exit code {instance.exit_code}" if instance.exit_code is not None else ""
        return "failed", "; ".join(x for x in (code, instance.reason or "") if x)
    if instance.draining:
        return "draining", ""
    if instance.serving:
        return "serving", ""
    if instance.health == HealthState.HEALTHY:
        return "healthy", ""
    if instance.health == HealthState.UNHEALTHY:
        return "unhealthy", instance.last_check.detail if instance.last_check else ""
    return "starting", ""


@dataclass(frozen=True, slots=True)
class WatchOutcome:
    ok: bool
    summary: str


def outcome_of(release: ReleaseOut) -> WatchOutcome | None:
    """Whether the release's rollout is over, and how; None while it runs."""
    version = f"v{release.version}"
    rollout = release.rollout
    if release.state == ReleaseState.ACTIVE or (
        rollout is not None and rollout.state == RolloutState.SUCCEEDED
    ):
        return WatchOutcome(True, f"{version} is the current release")
    if release.state == ReleaseState.FAILED or (
        rollout is not None and rollout.state == RolloutState.FAILED
    ):
        cause = release.error or (rollout.error if rollout else None) or "no cause recorded"
        return WatchOutcome(False, f"{version} failed: {cause}")
    if release.state == ReleaseState.SUPERSEDED or (
        rollout is not None and rollout.state == RolloutState.SUPERSEDED
    ):
        return WatchOutcome(False, f"{version} was superseded by a newer release")
    return None


@dataclass(slots=True)
class _Seen:
    phase: str
    detail: str = ""


@dataclass(slots=True)
class RolloutWatch:
    """Turns events and status snapshots into progress lines; ``elapsed`` is the seconds
    since the deploy call, printed at the start of each line."""

    versions: dict[uuid.UUID, int | None] = field(default_factory=dict)
    """instance id -> its release's version"""
    release_versions: dict[uuid.UUID, int] = field(default_factory=dict)
    """release id -> version, as status snapshots and the followed release tell"""
    nodes: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)
    _seen: dict[uuid.UUID, _Seen] = field(default_factory=dict)
    _events: set[int] = field(default_factory=set)
    _listed: set[uuid.UUID] = field(default_factory=set)

    def on_event(self, event: EventOut, elapsed: float) -> list[str]:
        if event.seq in self._events:
            return []
        self._events.add(event.seq)
        phase = _EVENT_PHASES.get(event.kind)
        if phase is None or event.instance_id is None:
            return [_line(elapsed, event.message)]
        if event.node_id is not None:
            self.nodes.setdefault(event.instance_id, event.node_id)
        version = event.data.get("version")
        if event.release_id is not None and event.release_id in self.release_versions:
            version = self.release_versions[event.release_id]
        if isinstance(version, int):
            self.versions.setdefault(event.instance_id, version)
        detail = event.message if phase in FAILURES else ""
        return self._advance(event.instance_id, phase, detail, elapsed)

    def on_status(self, status: AppStatus, elapsed: float) -> list[str]:
        lines: list[str] = []
        listed: set[uuid.UUID] = set()
        for instance in status.instances:
            listed.add(instance.id)
            self.versions.setdefault(instance.id, instance.version)
            if instance.release_id is not None and instance.version is not None:
                self.release_versions[instance.release_id] = instance.version
            if instance.node_id is not None:
                self.nodes[instance.id] = instance.node_id
            phase, detail = phase_of(instance)
            lines += self._advance(instance.id, phase, detail, elapsed)
        # gone from the status (terminated): stopped; only those an earlier snapshot listed,
        # since a snapshot asked for before an event was recorded can arrive after it
        for instance_id in sorted(self._listed - listed):
            if self._seen[instance_id].phase not in ("stopped", *FAILURES):
                lines += self._advance(instance_id, "stopped", "", elapsed)
        self._listed |= listed
        return lines

    def _advance(
        self, instance_id: uuid.UUID, phase: str, detail: str, elapsed: float
    ) -> list[str]:
        if not _is_news(self._seen.get(instance_id), phase, detail):
            return []
        self._seen[instance_id] = _Seen(phase, detail)
        return [_line(elapsed, self._label(instance_id, phase, detail))]

    def _label(self, instance_id: uuid.UUID, phase: str, detail: str) -> str:
        version = self.versions.get(instance_id)
        name = f"instance {str(instance_id)[:8]}" + (f" (v{version})" if version else "")
        node = self.nodes.get(instance_id)
        where = f" on node {str(node)[:8]}" if phase == "placed" and node else ""
        return f"{name} {phase}{where}" + (f": {detail}" if detail else "")


def _is_news(seen: _Seen | None, phase: str, detail: str) -> bool:
    """A later phase than the last printed, a new failure detail, or (after a failure) a
    restart or the instance's end."""
    if seen is None:
        return True
    if phase in FAILURES:
        if seen.phase in ("stopping", "stopped"):
            return False  # an instance being stopped: how it ends is not news
        return seen.phase != phase or not _same_detail(seen.detail, detail)
    if seen.phase in FAILURES:
        return phase != "placed"
    return PHASES.index(phase) > PHASES.index(seen.phase)


def _same_detail(one: str, other: str) -> bool:
    """The same check result told by an event (``health check fails: GET / -> 500``) and
    by a status snapshot (``GET / -> 500``)."""
    return one == other or one.endswith(other) or other.endswith(one)


def _line(elapsed: float, text: str) -> str:
    return f"{elapsed:6.1f}s  {text}"
