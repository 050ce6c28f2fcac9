"""Keep allocation updates of nodes cheap (HOT updates).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Every placement updates its node's ``allocated_*`` counters. 0002 indexed the free
capacity (an expression over those counters), which made every such update a non-HOT
update: a new entry in every index of ``nodes`` per placement, and index bloat that slowed
placements down the longer a burst lasted. The scheduler reads candidates rarely (a
short-lived snapshot per process), so a scan of ``nodes`` serves it; without the index,
and with free space left in each page (fillfactor 50), PostgreSQL updates the counters in
place (HOT).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX nodes_ready_free_idx")
    op.execute("ALTER TABLE nodes SET (fillfactor = 50)")
    # the per-node assignments version is bumped by every placement too
    op.execute("ALTER TABLE change_versions SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE change_versions RESET (fillfactor)")
    op.execute("ALTER TABLE nodes RESET (fillfactor)")
    op.execute(
        "CREATE INDEX nodes_ready_free_idx ON nodes "
        "((vcpu_millis - allocated_vcpu_millis), (memory_mib - allocated_memory_mib)) "
        "WHERE state = 'ready' AND deleted_at IS NULL"
    )
