"""Instances lost with their node, and their replacements.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

When a node stays ``down`` longer than ``ZEITWORK_RESCHEDULE_AFTER`` the operator marks its
instances lost: ``state = 'failed'`` with a reason, ``desired_state = 'terminated'``,
soft-deleted, ``lost_at`` set, and their reservation released at once (so ``allocated_*``
count every instance that is neither ``terminated`` nor lost; a lost instance reaching
``terminated`` later releases nothing). A lost instance of a deployment gets a replacement
on a ready node; ``replaced_by`` links it (NULL while none could be placed yet).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE instances ADD COLUMN lost_at timestamptz, "
        "ADD COLUMN replaced_by uuid REFERENCES instances (id)"
    )
    # the rescheduler's queue: lost instances of a deployment still waiting for a replacement
    op.execute(
        "CREATE INDEX instances_unreplaced_idx ON instances (lost_at) "
        "WHERE lost_at IS NOT NULL AND replaced_by IS NULL AND deployment_id IS NOT NULL"
    )
    op.execute("CREATE INDEX instances_replaced_by_idx ON instances (replaced_by)")


def downgrade() -> None:
    op.execute("DROP INDEX instances_replaced_by_idx")
    op.execute("DROP INDEX instances_unreplaced_idx")
    op.execute("ALTER TABLE instances DROP COLUMN replaced_by, DROP COLUMN lost_at")
