"""The lease does not skip a queued build that another transaction merely references (a
real PostgreSQL): a foreign key check (``webhook_deliveries.build_id``, a log chunk) holds
``FOR KEY SHARE`` on the build's row, and a lease taken with ``FOR UPDATE SKIP LOCKED``
skipped the build then and long-polled on for 5 s (bench-build's git push waited so)."""

from __future__ import annotations

from tests.integration.operator.conftest import OperatorFactory
from zeitwork.operator.principal import Scope


async def test_a_build_referenced_by_an_open_transaction_is_leased_at_once(
    operator_factory: OperatorFactory,
) -> None:
    op = await operator_factory()
    r = await op.client.post("/api/v1/projects", headers=op.headers(), json={"name": "locky"})
    assert r.status_code == 201, r.text
    r = await op.client.post(
        f"/api/v1/projects/{r.json()['slug']}/builds",
        headers=op.headers(),
        json={"git": {"url": "git://127.0.0.1:1/none.git", "ref": "main"}},
    )
    assert r.status_code == 201, r.text
    build_id = r.json()["id"]
    builder = op.headers(await op.token(Scope.BUILDER))
    async with op.deps.db.connection() as other, other.transaction():
        # what the webhook's "UPDATE webhook_deliveries SET build_id" does to the build's row
        await other.execute("SELECT 1 FROM builds WHERE id = %s FOR KEY SHARE", (build_id,))
        r = await op.client.post(
            "/api/v1/builder/lease", params={"wait": "0"}, headers=builder, json={"owner": "t"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["build"]["id"] == build_id
    # two builders still never take the same job: the leased row is held no more, and the
    # job is running under its lease, so a second lease finds nothing
    r = await op.client.post(
        "/api/v1/builder/lease", params={"wait": "0"}, headers=builder, json={"owner": "u"}
    )
    assert r.status_code == 204, r.text
