"""Pydantic models that cross a process boundary."""

from __future__ import annotations

from zeitwork.wire.agent import (
    AssignedInstance,
    Assignments,
    Heartbeat,
    ImageRef,
    InstanceStatus,
    InstanceStatusReport,
    NodeRegistered,
    NodeRegistration,
)
from zeitwork.wire.common import CapacityModel, ResourcesModel
from zeitwork.wire.problem import PROBLEM_CONTENT_TYPE, FieldError, Problem
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "AssignedInstance",
    "Assignments",
    "CapacityModel",
    "FieldError",
    "Heartbeat",
    "ImageRef",
    "InstanceStatus",
    "InstanceStatusReport",
    "NodeRegistered",
    "NodeRegistration",
    "Problem",
    "ResourcesModel",
    "Route",
    "RouteBackend",
    "RouteTable",
]
