"""The load balancer against the real operator's route table (HTTP, proxy-scoped token)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from tests.integration.lb.conftest import MakeLB, MakeOrigin, eventually, http
from tests.integration.operator.conftest import Operator, operator, operator_factory
from tests.integration.operator.fleet import ready_image, ready_node
from zeitwork.operator.principal import Scope

__all__ = ["operator", "operator_factory"]  # fixtures reused from the operator's tests


@pytest.fixture
async def operator_url(operator: Operator) -> AsyncIterator[str]:
    """Serve the operator app over a real socket (port 0) with uvicorn."""
    app: Any = operator.client._transport.app  # type: ignore[attr-defined]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, timeout=10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    sock.close()


async def test_lb_follows_the_operators_route_table(
    operator: Operator, operator_url: str, make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    origin = await make_origin("shop")
    node_id, node_token = await ready_node(operator)
    image = await ready_image(operator)
    h = operator.headers()
    project = (
        await operator.client.post("/api/v1/projects", headers=h, json={"name": "Shop"})
    ).json()
    r = await operator.client.post(
        "/api/v1/deployments",
        headers=h,
        json={
            "project_id": project["id"],
            "image_id": image,
            "replicas": 1,
            "resources": {"vcpu": 1, "memory": 256},
            "port": origin.port,
        },
    )
    assert r.status_code == 201, r.text
    dep = r.json()
    r = await operator.client.post(
        "/api/v1/domains",
        headers=h,
        json={"name": "shop.example.com", "project_id": project["id"], "deployment_id": dep["id"]},
    )
    assert r.status_code == 201, r.text

    token = await operator.token(Scope.PROXY)
    lb = await make_lb(operator_url=operator_url, token=token)
    await eventually(lambda: lb.router.version is not None, timeout=10)
    # the route exists but has no running instance yet: 503, not a hang
    assert (await http(lb.port, path="/who", host="shop.example.com")).status == 503

    instance = dep["instances"][0]
    for state in ("starting", "running"):
        body: dict[str, Any] = {"state": state}
        if state == "running":
            body |= {"ip_address": "127.0.0.1", "port": origin.port}
        r = await operator.client.put(
            f"/api/v1/instances/{instance['id']}/state",
            headers=operator.headers(node_token),
            json=body,
        )
        assert r.status_code == 200, r.text

    async def served() -> bool:
        return (await http(lb.port, path="/who", host="shop.example.com")).body == b"shop"

    await eventually(served, timeout=3)
    assert node_id
