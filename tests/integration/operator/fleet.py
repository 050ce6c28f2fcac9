"""Helpers for the operator API tests of instances, agents, routes and deployments: ready
nodes with node tokens, ready images (rows only), and common assertions."""

from __future__ import annotations

import uuid
from typing import Any

from tests.integration.operator.conftest import Operator
from zeitwork.operator.principal import Scope

PROBLEM = "application/problem+json"


async def ready_node(
    op: Operator, hostname: str | None = None, *, vcpu: float = 4, memory: int = 8192
) -> tuple[str, str]:
    """Register a node with a join token, heartbeat it to ``ready``; (node id, node token)."""
    join = await op.token(Scope.JOIN)
    r = await op.client.post(
        "/api/v1/nodes",
        headers=op.headers(join),
        json={
            "hostname": hostname or f"node-{uuid.uuid4().hex[:8]}",
            "ip_address": "10.0.0.10",
            "resources": {"vcpu": vcpu, "memory": memory},
        },
    )
    assert r.status_code == 201, r.text
    node_id, token = r.json()["node_id"], r.json()["node_token"]
    r = await op.client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        headers=op.headers(token),
        json=heartbeat_body(vcpu=vcpu, memory=memory),
    )
    assert r.status_code == 204, r.text
    return node_id, token


def heartbeat_body(*, vcpu: float = 4, memory: int = 8192, **extra: Any) -> dict[str, Any]:
    cap = {"vcpu": vcpu, "memory": memory, "disk": 0}
    return {"capacity": cap, "used": {"vcpu": 0, "memory": 0}, "available": cap, **extra}


async def ready_image(op: Operator, name: str = "app") -> str:
    """An image row in state ready (the import path is tested in test_images_api)."""
    digest = "sha256:" + uuid.uuid4().hex * 2
    rows = await op.sql(
        "INSERT INTO images (name, status, digest, size, config) "
        "VALUES (%s, 'ready', %s, 1234, '{}') RETURNING id",
        (name, digest),
    )
    return str(rows[0][0])


def instance_body(image_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "resources": {"vcpu": 1, "memory": 1024},
        "default_port": 8080,
        **extra,
    }


async def allocated(op: Operator, node_id: str) -> tuple[int, int]:
    rows = await op.sql(
        "SELECT allocated_vcpu_millis, allocated_memory_mib FROM nodes WHERE id = %s", (node_id,)
    )
    return int(rows[0][0]), int(rows[0][1])


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body
