"""Per-node allocation counters for the scheduler.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

``nodes.allocated_vcpu_millis`` / ``allocated_memory_mib`` hold what the instances placed on
a node reserve (every instance whose state is not ``terminated``). A placement increments
them with one conditional ``UPDATE ... WHERE allocated + request <= capacity`` (the row lock
makes racing placements for the last slot safe); an instance reaching ``terminated``
decrements them in the same transaction. The upgrade backfills them from ``instances``.
A ready image always has a digest (agents download it by digest).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE nodes "
        "ADD COLUMN allocated_vcpu_millis integer NOT NULL DEFAULT 0 "
        "CONSTRAINT nodes_allocated_vcpu_check CHECK (allocated_vcpu_millis >= 0), "
        "ADD COLUMN allocated_memory_mib integer NOT NULL DEFAULT 0 "
        "CONSTRAINT nodes_allocated_memory_check CHECK (allocated_memory_mib >= 0)"
    )
    op.execute(
        "UPDATE nodes SET allocated_vcpu_millis = a.vcpu, allocated_memory_mib = a.mem "
        "FROM (SELECT node_id, sum(vcpu_millis) AS vcpu, sum(memory_mib) AS mem "
        "      FROM instances WHERE state <> 'terminated' AND node_id IS NOT NULL "
        "      GROUP BY node_id) AS a "
        "WHERE nodes.id = a.node_id"
    )
    op.execute(
        "ALTER TABLE images ADD CONSTRAINT images_ready_has_digest "
        "CHECK (status <> 'ready' OR digest IS NOT NULL)"
    )
    # the scheduler's candidate scan: ready nodes, tightest first
    op.execute(
        "CREATE INDEX nodes_ready_free_idx ON nodes "
        "((vcpu_millis - allocated_vcpu_millis), (memory_mib - allocated_memory_mib)) "
        "WHERE state = 'ready' AND deleted_at IS NULL"
    )
    op.execute(
        "CREATE INDEX domains_deployment_live_idx ON domains (deployment_id) "
        "WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX nodes_ready_free_idx")
    op.execute("ALTER TABLE images DROP CONSTRAINT images_ready_has_digest")
    op.execute(
        "ALTER TABLE nodes DROP COLUMN allocated_memory_mib, DROP COLUMN allocated_vcpu_millis"
    )
