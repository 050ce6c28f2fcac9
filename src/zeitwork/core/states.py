"""State enums and their transition tables, checked in one function.

The database stores each state's ``value`` with a CHECK constraint and every write is
compare-and-set (``UPDATE ... WHERE state = expected``); this module decides what is legal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from zeitwork.core.errors import InvalidTransition


class NodeState(StrEnum):
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"
    TERMINATED = "terminated"
    ERROR = "error"
    UNKNOWN = "unknown"


class InstanceState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    TERMINATED = "terminated"


class ImageState(StrEnum):
    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class DeploymentState(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    INACTIVE = "inactive"
    FAILED = "failed"


class ReleaseState(StrEnum):
    """A release (one immutable version of an app's environment)."""

    PENDING = "pending"  # created, its rollout not started yet
    DEPLOYING = "deploying"  # its rollout runs
    ACTIVE = "active"  # the environment's current release
    SUPERSEDED = "superseded"  # was active (or deploying) and a newer release took over
    FAILED = "failed"  # its rollout failed (reverted) or was refused


class RolloutState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # reverted: the previous release kept serving
    SUPERSEDED = "superseded"  # a newer deploy to the same environment took over


class HealthState(StrEnum):
    """An instance's health as its agent's checks see it."""

    UNKNOWN = "unknown"  # no result yet (or within the grace period)
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


_N = NodeState
NODE_TRANSITIONS: Mapping[NodeState, frozenset[NodeState]] = {
    _N.BOOTING: frozenset({_N.READY, _N.ERROR, _N.DOWN, _N.TERMINATED, _N.UNKNOWN}),
    _N.READY: frozenset({_N.DRAINING, _N.DOWN, _N.ERROR, _N.TERMINATED, _N.UNKNOWN}),
    _N.DRAINING: frozenset({_N.READY, _N.DOWN, _N.TERMINATED, _N.ERROR, _N.UNKNOWN}),
    _N.DOWN: frozenset({_N.READY, _N.DRAINING, _N.BOOTING, _N.TERMINATED, _N.ERROR, _N.UNKNOWN}),
    _N.ERROR: frozenset({_N.BOOTING, _N.READY, _N.DOWN, _N.TERMINATED}),
    _N.UNKNOWN: frozenset({_N.BOOTING, _N.READY, _N.DOWN, _N.ERROR, _N.TERMINATED}),
    _N.TERMINATED: frozenset(),
}

_I = InstanceState
INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    _I.PENDING: frozenset({_I.STARTING, _I.STOPPED, _I.FAILED, _I.TERMINATED}),
    _I.STARTING: frozenset({_I.RUNNING, _I.STOPPING, _I.FAILED, _I.STOPPED, _I.TERMINATED}),
    _I.RUNNING: frozenset({_I.STOPPING, _I.STOPPED, _I.FAILED, _I.STARTING, _I.TERMINATED}),
    _I.STOPPING: frozenset({_I.STOPPED, _I.FAILED, _I.TERMINATED}),
    _I.STOPPED: frozenset({_I.STARTING, _I.PENDING, _I.TERMINATED}),
    _I.FAILED: frozenset({_I.STARTING, _I.PENDING, _I.TERMINATED}),
    _I.TERMINATED: frozenset(),
}

_M = ImageState
IMAGE_TRANSITIONS: Mapping[ImageState, frozenset[ImageState]] = {
    _M.PENDING: frozenset({_M.BUILDING, _M.READY, _M.FAILED}),
    _M.BUILDING: frozenset({_M.READY, _M.FAILED}),
    _M.READY: frozenset(),
    _M.FAILED: frozenset({_M.PENDING}),
}

_D = DeploymentState
DEPLOYMENT_TRANSITIONS: Mapping[DeploymentState, frozenset[DeploymentState]] = {
    _D.PENDING: frozenset({_D.DEPLOYING, _D.FAILED}),
    _D.DEPLOYING: frozenset({_D.ACTIVE, _D.FAILED}),
    _D.ACTIVE: frozenset({_D.INACTIVE, _D.FAILED}),
    _D.INACTIVE: frozenset({_D.ACTIVE}),
    _D.FAILED: frozenset(),
}

_R = ReleaseState
RELEASE_TRANSITIONS: Mapping[ReleaseState, frozenset[ReleaseState]] = {
    _R.PENDING: frozenset({_R.DEPLOYING, _R.FAILED, _R.SUPERSEDED}),
    _R.DEPLOYING: frozenset({_R.ACTIVE, _R.FAILED, _R.SUPERSEDED}),
    _R.ACTIVE: frozenset({_R.SUPERSEDED}),
    _R.SUPERSEDED: frozenset(),
    _R.FAILED: frozenset(),
}

_O = RolloutState
ROLLOUT_TRANSITIONS: Mapping[RolloutState, frozenset[RolloutState]] = {
    _O.RUNNING: frozenset({_O.SUCCEEDED, _O.FAILED, _O.SUPERSEDED}),
    _O.SUCCEEDED: frozenset(),
    _O.FAILED: frozenset(),
    _O.SUPERSEDED: frozenset(),
}

_S = TypeVar(
    "_S", NodeState, InstanceState, ImageState, DeploymentState, ReleaseState, RolloutState
)

_TABLES: Mapping[type[StrEnum], Mapping[object, frozenset[object]]] = {
    NodeState: NODE_TRANSITIONS,  # type: ignore[dict-item]
    InstanceState: INSTANCE_TRANSITIONS,  # type: ignore[dict-item]
    ImageState: IMAGE_TRANSITIONS,  # type: ignore[dict-item]
    DeploymentState: DEPLOYMENT_TRANSITIONS,  # type: ignore[dict-item]
    ReleaseState: RELEASE_TRANSITIONS,  # type: ignore[dict-item]
    RolloutState: ROLLOUT_TRANSITIONS,  # type: ignore[dict-item]
}


def is_allowed(current: _S, target: _S) -> bool:
    """Whether ``current -> target`` is a legal change (staying put is always legal)."""
    if current == target:
        return True
    table = _TABLES[type(current)]
    return target in table[current]


def check_transition(current: _S, target: _S) -> _S:
    """Return ``target`` if the change is legal, else raise InvalidTransition."""
    if not is_allowed(current, target):
        kind = type(current).__name__.removesuffix("State").lower()
        allowed = sorted(s.value for s in _TABLES[type(current)][current])  # type: ignore[attr-defined]
        raise InvalidTransition(
            f"{kind} cannot go from {current.value!r} to {target.value!r}",
            extra={"from": current.value, "to": target.value, "allowed": allowed},
        )
    return target


def node_state_after_outage(before_down: NodeState | None) -> NodeState:
    """The state a ``down`` node returns to when its heartbeats resume: ``draining`` if it
    was draining when it went down (an outage does not undo a drain), else ``ready``."""
    target = _N.DRAINING if before_down == _N.DRAINING else _N.READY
    return check_transition(_N.DOWN, target)
