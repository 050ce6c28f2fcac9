"""Load balancers' request totals per route, sampled for ``zeitwork status``.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

- ``proxy_stats``: one row per snapshot a load balancer pushes (``POST
  /api/v1/proxies/stats``): its id, its own clock's ``at`` and ``started_at`` (a new
  ``started_at`` means it restarted and its totals began again), the latency bucket bounds
  and the totals per route host as JSON. Rates are differences between a balancer's samples.
  Retention is short: every push deletes the samples older than about two minutes, so the
  table holds a few dozen rows per balancer.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE TABLE proxy_stats (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    lb_id text NOT NULL CHECK (lb_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    at double precision NOT NULL,
    started_at double precision NOT NULL,
    latency_bounds jsonb NOT NULL,
    routes jsonb NOT NULL
);
CREATE TRIGGER proxy_stats_touch BEFORE UPDATE ON proxy_stats
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX proxy_stats_lb_id_at_key ON proxy_stats (lb_id, at);
CREATE INDEX proxy_stats_created_at_idx ON proxy_stats (created_at);
"""

_DOWNGRADE = "DROP TABLE proxy_stats;"


def upgrade() -> None:
    for statement in _UPGRADE.split(";\n"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute(_DOWNGRADE)
