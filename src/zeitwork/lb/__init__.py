"""The load balancer service: routes from the operator's table, balancing, health checks,
admin listener and workers, on the shared proxy core (``zeitwork.proxy``)."""

from __future__ import annotations

from zeitwork.lb.main import LoadBalancer, run, serve
from zeitwork.lb.router import BackendRegistry, RouteTableRouter
from zeitwork.lb.settings import LBSettings

__all__ = ["BackendRegistry", "LBSettings", "LoadBalancer", "RouteTableRouter", "run", "serve"]
