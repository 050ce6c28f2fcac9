"""Per-route (path prefix) rate limits of a domain at the edges.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27

``path_rate_limits`` holds a list of ``zeitwork.wire.routes.PathRateLimit`` as JSON
(validated by the API). Each entry becomes a route of its own in the route table (same
backends as the domain, its own limit), so changing it bumps the ``routes`` version.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE domains ADD COLUMN path_rate_limits jsonb "
        "CHECK (path_rate_limits IS NULL OR jsonb_typeof(path_rate_limits) = 'array')"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE domains DROP COLUMN path_rate_limits")
