"""Watch topics: a version counter per topic, bumped with the change, plus NOTIFY.

Topics: ``ROUTES`` (the route table of load balancers and edges) and
``assignments_topic(node_id)`` (what one node should run). Call ``bump`` inside the same
transaction as the change it announces; PostgreSQL delivers the NOTIFY at commit, and
never for a rolled-back change. NOTIFY only wakes long-polls early: a long-poll must
compare versions (``version``) and re-check periodically.
"""

from __future__ import annotations

import uuid

from zeitwork.operator.db.database import Conn

CHANNEL = "zeitwork_changes"
ROUTES = "routes"
RELEASES = "releases"
"""Wakes the reconcile loop: deploys, scale and drain changes, and every state or health
change of an instance of a release."""
PEERS = "peers"
"""Other nodes' subnets and addresses (agents' peer routes); bumped by a trigger on
``nodes`` (migration 0005), part of every node's assignments version."""


async def versions_sum(conn: Conn, topics: tuple[str, ...]) -> int:
    """The sum of several topics' versions (it changes whenever one of them does)."""
    cur = await conn.execute(
        "SELECT coalesce(sum(version), 0) FROM change_versions WHERE topic = ANY(%s)",
        (list(topics),),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


def assignments_topic(node_id: uuid.UUID) -> str:
    return f"assignments:{node_id}"


async def bump(conn: Conn, topic: str) -> int:
    """Increment ``topic``'s version (creating it at 1) and NOTIFY; returns the new version."""
    cur = await conn.execute(
        "INSERT INTO change_versions (topic, version) VALUES (%s, 1) "
        "ON CONFLICT (topic) DO UPDATE SET version = change_versions.version + 1 "
        "RETURNING version",
        (topic,),
    )
    row = await cur.fetchone()
    assert row is not None  # INSERT ... RETURNING always returns the row
    new_version = int(row[0])
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic} {new_version}"))
    return new_version


async def version(conn: Conn, topic: str) -> int:
    """The current version of ``topic`` (0 when it never changed)."""
    cur = await conn.execute("SELECT version FROM change_versions WHERE topic = %s", (topic,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])
