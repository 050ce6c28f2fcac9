"""The agent API's bearer check: a wrong token is a 401 problem, whatever bytes it holds."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry

from zeitwork.agent.api import create_app
from zeitwork.agent.supervisor import Supervisor


async def _info() -> dict[str, Any]:
    return {"node": "test"}


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = create_app(
        supervisor=cast(Supervisor, object()),  # the routes used here never touch it
        tokens=lambda: ["zw_right"],
        node_info=_info,
        registry=CollectorRegistry(),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")


@pytest.mark.parametrize(
    "header",
    [b"Bearer zw_wrong", b"Bearer \xe9\xe9\xe9", b"Bearer zw_righ\xff"],
)
async def test_a_wrong_token_is_401_not_a_crash(client: httpx.AsyncClient, header: bytes) -> None:
    async with client:
        answer = await client.get("/node/info", headers=[(b"authorization", header)])
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_the_right_token_passes(client: httpx.AsyncClient) -> None:
    async with client:
        answer = await client.get("/node/info", headers={"authorization": "Bearer zw_right"})
    assert answer.status_code == 200
    assert answer.json() == {"node": "test"}
