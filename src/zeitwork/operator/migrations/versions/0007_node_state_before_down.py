"""Nodes remember the state they were in when they went ``down``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

The node-down detector records the serving state a node had (``ready`` or ``draining``) in
``state_before_down``; when heartbeats resume the node goes back to it, so a draining node
that missed a few heartbeats stays drained (the scheduler does not place on it again).
NULL while the node is not down (or went down from another state: it comes back ``ready``).
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE nodes ADD COLUMN state_before_down text "
        "CHECK (state_before_down IN ('ready', 'draining'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE nodes DROP COLUMN state_before_down")
