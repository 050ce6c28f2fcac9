"""Which active check each backend gets: pure, from the route table and the settings.

A route's ``health_check`` (the current release's, as the operator serves it) applies to
the backends of that route: ``http`` with its path, Host header, port and status range,
``tcp``, or ``none``; its interval, timeout and thresholds too. Backends the table names
without a check (routes without one, ``default_backends``) get the balancer's own default:
a tcp connect with the ``LB_HEALTH_*`` interval, timeout and thresholds. Static backends
(``LB_BACKENDS``) get ``GET LB_HEALTH_PATH`` when that is set, a tcp connect otherwise.
"""

from __future__ import annotations

import dataclasses

from zeitwork.proxy.health import CheckSpec
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import RouteTable


def from_wire(check: HealthCheck) -> CheckSpec:
    """The load balancer's form of a release's check (its grace period is the agent's
    business: the operator lists an instance only once its agent found it healthy)."""
    return CheckSpec(
        kind=check.type,
        path=check.path,
        host=check.host,
        port=check.port,
        status_min=check.expected_status_min,
        status_max=check.expected_status_max,
        interval=check.interval,
        timeout=check.timeout,
        rise=check.healthy_threshold,
        fall=check.unhealthy_threshold,
    )


def default_check(*, interval: float, timeout: float, rise: int, fall: int) -> CheckSpec:
    """The balancer's own check: a tcp connect."""
    return CheckSpec(kind="tcp", interval=interval, timeout=timeout, rise=rise, fall=fall)


def static_check(own: CheckSpec, *, path: str | None) -> CheckSpec:
    """The check of ``LB_BACKENDS``: ``GET path`` (``LB_HEALTH_PATH``) when that is set,
    else the balancer's own ``own``, with its interval, timeout and thresholds."""
    if path is None:
        return own
    return dataclasses.replace(own, kind="http", path=path)


def assign(table: RouteTable) -> dict[str, CheckSpec]:
    """Backend address -> the check of the first route (in table order) that names it and
    carries one. Addresses not in the result get the caller's default."""
    checks: dict[str, CheckSpec] = {}
    converted: dict[HealthCheck, CheckSpec] = {}
    for route in table.routes:
        check = route.health_check
        if check is None:
            continue
        spec = converted.get(check)
        if spec is None:
            spec = converted[check] = from_wire(check)
        for backend in route.backends:
            checks.setdefault(backend.address, spec)
    return checks
