"""Pure domain code: ids, states and their transition tables, errors, resources, clock.

No network, database or logging here (an import-linter contract keeps it that way); the
only OS calls are the two small helpers every layer shares, ``process`` and ``files``.
"""

from __future__ import annotations

from zeitwork.core.clock import Clock, FakeClock, SystemClock
from zeitwork.core.errors import (
    AuthenticationRequired,
    Conflict,
    InsufficientCapacity,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    ZeitworkError,
)
from zeitwork.core.ids import new_id, parse_id
from zeitwork.core.resources import Resources
from zeitwork.core.states import (
    DeploymentState,
    HealthState,
    ImageState,
    InstanceState,
    NodeState,
    ReleaseState,
    RolloutState,
    check_transition,
    is_allowed,
)

__all__ = [
    "AuthenticationRequired",
    "Clock",
    "Conflict",
    "DeploymentState",
    "FakeClock",
    "HealthState",
    "ImageState",
    "InstanceState",
    "InsufficientCapacity",
    "InvalidInput",
    "InvalidTransition",
    "NodeState",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ReleaseState",
    "Resources",
    "RolloutState",
    "ServiceUnavailable",
    "SystemClock",
    "ZeitworkError",
    "check_transition",
    "is_allowed",
    "new_id",
    "parse_id",
]
