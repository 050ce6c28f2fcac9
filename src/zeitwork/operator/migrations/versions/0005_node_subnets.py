"""Instance subnets of nodes, allocated by the operator; the ``peers`` watch topic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

``nodes.subnet`` is the node's instance subnet: allocated from the operator's pool
(``ZEITWORK_INSTANCE_NETWORK``) at the node's first registration, or the one its agent is
configured with. No two live nodes have overlapping subnets (an exclusion constraint; a
deleted node's subnet is free again). Node changes that move other nodes' peer routes
(state, address, subnet, deletion) bump the ``peers`` topic, and state changes keep
bumping ``routes`` (0004).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE nodes ADD COLUMN subnet cidr")
    op.execute(
        "ALTER TABLE nodes ADD CONSTRAINT nodes_subnet_excl "
        "EXCLUDE USING gist (subnet inet_ops WITH &&) "
        "WHERE (deleted_at IS NULL AND subnet IS NOT NULL)"
    )
    op.execute("INSERT INTO change_versions (topic, version) VALUES ('peers', 0)")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION zeitwork_node_state_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.state IS DISTINCT FROM NEW.state
               OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at THEN
                PERFORM zeitwork_bump_topic('routes');
            END IF;
            PERFORM zeitwork_bump_topic('peers');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER nodes_state_changed ON nodes")
    op.execute(
        "CREATE TRIGGER nodes_state_changed "
        "AFTER UPDATE OF state, deleted_at, ip_address, subnet ON nodes "
        "FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state "
        "OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at "
        "OR OLD.ip_address IS DISTINCT FROM NEW.ip_address "
        "OR OLD.subnet IS DISTINCT FROM NEW.subnet) "
        "EXECUTE FUNCTION zeitwork_node_state_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER nodes_state_changed ON nodes")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION zeitwork_node_state_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM zeitwork_bump_topic('routes');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER nodes_state_changed AFTER UPDATE OF state, deleted_at ON nodes "
        "FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state "
        "OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) "
        "EXECUTE FUNCTION zeitwork_node_state_changed()"
    )
    op.execute("DELETE FROM change_versions WHERE topic = 'peers'")
    op.execute("ALTER TABLE nodes DROP CONSTRAINT nodes_subnet_excl")
    op.execute("ALTER TABLE nodes DROP COLUMN subnet")
