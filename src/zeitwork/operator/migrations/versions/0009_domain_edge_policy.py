"""Per-domain CORS and security-header policy for the edges.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

``edge_policy`` holds a ``zeitwork.wire.routes.EdgePolicyOverride`` as JSON (validated by
the API); it travels in the route table, so changing it bumps the ``routes`` version.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE domains ADD COLUMN edge_policy jsonb "
        "CHECK (edge_policy IS NULL OR jsonb_typeof(edge_policy) = 'object')"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE domains DROP COLUMN edge_policy")
