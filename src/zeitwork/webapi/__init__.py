"""What every Zeitwork FastAPI service shares: problem+json errors, request ids, request
metrics, body limits, and the ``/health`` and ``/metrics`` endpoints."""

from __future__ import annotations

from zeitwork.webapi.app import HealthCheck, install_common
from zeitwork.webapi.problems import STATUS_BY_ERROR, problem_response

__all__ = ["STATUS_BY_ERROR", "HealthCheck", "install_common", "problem_response"]
