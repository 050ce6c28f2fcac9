"""Path-prefix matching, the same for the load balancer's routes and the edge's per-route
policies: a prefix matches at a segment boundary (``/api`` matches ``/api`` and ``/api/x``,
not ``/apis``); ``/`` and a prefix ending in ``/`` match everything below them."""

from __future__ import annotations


def prefix_matches(path: str, prefix: str) -> bool:
    if prefix in ("/", path):
        return True
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or path[len(prefix)] == "/"
