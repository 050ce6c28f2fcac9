"""A node's state change bumps the route table's version.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The route table advertises only instances on nodes that serve (``ready`` or ``draining``),
so a node going ``down`` (or coming back, or being deleted) changes the table. Node state
changes happen on several paths (the down/ready detector, heartbeats, the admin API,
deletion); a trigger announces all of them in the transaction that makes the change, the
same way ``zeitwork.operator.db.changes.bump`` does (version + 1 and a NOTIFY on
``zeitwork_changes`` with ``"<topic> <version>"``).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION zeitwork_bump_topic(topic_name text) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            new_version bigint;
        BEGIN
            INSERT INTO change_versions (topic, version) VALUES (topic_name, 1)
            ON CONFLICT (topic) DO UPDATE SET version = change_versions.version + 1
            RETURNING version INTO new_version;
            PERFORM pg_notify('zeitwork_changes', topic_name || ' ' || new_version);
            RETURN new_version;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION zeitwork_node_state_changed() RETURNS trigger
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


def downgrade() -> None:
    op.execute("DROP TRIGGER nodes_state_changed ON nodes")
    op.execute("DROP FUNCTION zeitwork_node_state_changed()")
    op.execute("DROP FUNCTION zeitwork_bump_topic(text)")
