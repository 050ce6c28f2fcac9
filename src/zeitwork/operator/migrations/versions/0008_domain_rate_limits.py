"""Per-domain rate limits for the edge.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

``rate_limit_rps`` / ``rate_limit_burst`` on a domain override the edge's global per-client
limit for that host (NULL: the global one). They travel in the route table, so changing them
bumps the ``routes`` version.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE domains "
        "ADD COLUMN rate_limit_rps double precision "
        "CHECK (rate_limit_rps > 0 AND rate_limit_rps <= 1000000), "
        "ADD COLUMN rate_limit_burst integer "
        "CHECK (rate_limit_burst >= 1 AND rate_limit_burst <= 1000000), "
        "ADD CONSTRAINT domains_rate_limit_burst_needs_rps "
        "CHECK (rate_limit_burst IS NULL OR rate_limit_rps IS NOT NULL)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE domains DROP CONSTRAINT domains_rate_limit_burst_needs_rps, "
        "DROP COLUMN rate_limit_burst, DROP COLUMN rate_limit_rps"
    )
