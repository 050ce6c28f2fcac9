"""A real ``zeitwork operator`` process SIGKILLed in the middle of a rolling update and
started again on the same database: its reconcile loop picks the rollout up from the rows,
with no instance placed twice or lost, and the route never empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.live_operator import ADMIN, OperatorProcess
from tests.integration.operator.releases_kit import Platform, bind, platform

pytestmark = pytest.mark.slow

HOST = "app.example.com"


async def _start(p: Platform, data_dir: Path, log: Path, url: str) -> OperatorProcess:
    process = OperatorProcess(data_dir, log, database_url=url)
    port = await asyncio.to_thread(process.wait_started)
    await p.op.client.aclose()
    p.op.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
    return process


async def test_an_operator_killed_mid_rollout_resumes_it_after_restart(
    operator: Operator, tmp_path: Path
) -> None:
    p = await platform(operator)
    p.drive_loop = False  # the operator process runs its own loop
    first = await _start(p, tmp_path / "one", tmp_path / "one.log", operator.url)
    second: OperatorProcess | None = None
    try:
        p.op.admin_token = ADMIN
        await p.deploy(replicas=3)
        await bind(p, HOST)

        async def is_active(version: int) -> bool:
            return bool((await p.release(version))["state"] == "active")

        await p.converge(lambda: is_active(1), max_steps=0, seconds=30)
        v2 = await p.deploy()

        async def mixed() -> bool:
            versions = [v for v, _s, _h, serving in await p.live() if serving]
            return 1 in versions and 2 in versions

        await p.converge(mixed, host=HOST, min_backends=3, max_steps=0, seconds=30)
        first.process.kill()  # SIGKILL: no drain, no clean-up
        await asyncio.to_thread(first.process.wait, 10)
        rows = await operator.sql("SELECT state FROM releases WHERE id = %s", (v2["id"],))
        assert rows == [("deploying",)]

        second = await _start(p, tmp_path / "two", tmp_path / "two.log", operator.url)
        await p.converge(lambda: is_active(2), host=HOST, min_backends=3, max_steps=0, seconds=30)

        async def only_v2() -> bool:
            return [v for v, *_ in await p.live()] == [2, 2, 2]

        await p.converge(only_v2, host=HOST, min_backends=3, max_steps=0, seconds=30)
        placed = await operator.sql(
            "SELECT count(*) FROM instances WHERE release_id = %s", (v2["id"],)
        )
        assert placed == [(3,)]  # none placed twice, none lost
        assert await p.backends(HOST) == [v2["id"]] * 3
    finally:
        await p.op.client.aclose()
        first.stop()
        if second is not None:
            second.stop()
