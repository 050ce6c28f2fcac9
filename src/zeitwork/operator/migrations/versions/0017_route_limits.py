"""Per-route limits a release sets for the load balancers.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

- ``releases.response_idle_timeout``: seconds a response may stall (before its head and
  between its reads) before the load balancers cut it (504 before the head);
- ``releases.tunnel_idle_timeout``: seconds an upgraded connection (WebSocket) may be idle
  before the load balancers close it (a WebSocket with close code 1001);
- ``releases.max_tunnels``: upgraded connections each load balancer worker holds open on the
  routes of the release's environment at most (more are answered 503 with Retry-After).

NULL (every release before this one): the load balancers' own settings, no tunnel limit.
The route table gives each route its environment's current release's values
(``Route.response_idle_timeout``, ``tunnel_idle_timeout``, ``max_tunnels``).
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_UPGRADE = """
ALTER TABLE releases
    ADD COLUMN response_idle_timeout double precision
        CONSTRAINT releases_response_idle_timeout
        CHECK (response_idle_timeout BETWEEN 1 AND 86400),
    ADD COLUMN tunnel_idle_timeout double precision
        CONSTRAINT releases_tunnel_idle_timeout
        CHECK (tunnel_idle_timeout BETWEEN 1 AND 86400),
    ADD COLUMN max_tunnels integer
        CONSTRAINT releases_max_tunnels CHECK (max_tunnels BETWEEN 1 AND 1000000)
"""

_DOWNGRADE = """
ALTER TABLE releases
    DROP COLUMN response_idle_timeout,
    DROP COLUMN tunnel_idle_timeout,
    DROP COLUMN max_tunnels
"""


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute(_DOWNGRADE)
