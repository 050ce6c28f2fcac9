"""Helpers for the release tests: fake agents that run what the operator assigns them and
report state and health through the agent API, the reconcile loop driven pass by pass, and
the route table's invariants checked at every step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import ready_image, ready_node
from zeitwork.operator.main import build_reconcile_loop
from zeitwork.operator.principal import Scope
from zeitwork.operator.reconcile.loop import ReconcileLoop
from zeitwork.wire.routes import RouteTable

FAST: dict[str, Any] = {
    "type": "rolling",
    "min_healthy_time": 0,
    "drain_timeout": 0,
    "healthy_deadline": 60,
    "progress_deadline": 120,
}

Verdict = Callable[[dict[str, Any]], str]
"""An assigned instance -> 'healthy' | 'unhealthy' | 'exit' (what the fake agent makes of it)."""


def always_healthy(_instance: dict[str, Any]) -> str:
    return "healthy"


@dataclass
class ByRelease:
    """Verdicts per release id (default healthy)."""

    verdicts: dict[str, str] = field(default_factory=dict)

    def __call__(self, instance: dict[str, Any]) -> str:
        return self.verdicts.get(str(instance.get("release_id")), "healthy")


@dataclass
class FakeAgent:
    """Runs assigned instances in memory: pending -> starting -> running with an address
    and the health ``verdict`` gives; desired ``terminated`` -> terminated."""

    op: Operator
    node_id: str
    token: str
    number: int
    verdict: Verdict = always_healthy
    running: dict[str, str] = field(default_factory=dict)
    """instance id -> the state this agent last reported"""

    async def report(self, instance_id: str, body: dict[str, Any]) -> None:
        r = await self.op.client.put(
            f"/api/v1/instances/{instance_id}/state",
            headers=self.op.headers(self.token),
            json=body,
        )
        assert r.status_code == 200, r.text
        self.running[instance_id] = body["state"]

    async def sync(self) -> None:
        r = await self.op.client.get(
            f"/api/v1/nodes/{self.node_id}/assignments", headers=self.op.headers(self.token)
        )
        assert r.status_code == 200, r.text
        for inst in r.json()["instances"]:
            iid = inst["id"]
            state = self.running.get(iid, "pending")
            if inst["desired_state"] == "terminated":
                if state != "terminated":
                    await self.report(iid, {"state": "terminated"})
                continue
            if state in ("failed", "terminated"):
                continue
            verdict = self.verdict(inst)
            if state == "pending":
                await self.report(iid, {"state": "starting"})
                state = "starting"
            if verdict == "exit":
                await self.report(
                    iid, {"state": "failed", "exit_code": 3, "log_tail": ["boom: bad config"]}
                )
                continue
            address = (
                f"10.{100 + self.number}.{uuid.UUID(iid).int % 250}.{1 + uuid.UUID(iid).int % 251}"
            )
            health = {
                "state": verdict,
                "last": {
                    "ok": verdict == "healthy",
                    "detail": "tcp :8080 open" if verdict == "healthy" else "GET /healthz -> 500",
                },
            }
            if state == "starting":
                await self.report(
                    iid,
                    {"state": "running", "ip_address": address, "port": 8080, "health": health},
                )
            else:
                current = await self.op.sql("SELECT health FROM instances WHERE id = %s", (iid,))
                if current and current[0][0] != verdict:
                    await self.report(iid, {"state": "running", "health": health})


@dataclass
class Platform:
    op: Operator
    agents: list[FakeAgent]
    image: str
    project: dict[str, Any]
    proxy: dict[str, str]
    loop: ReconcileLoop
    verdicts: ByRelease
    steps: int = 0
    drive_loop: bool = True

    async def routes(self) -> RouteTable:
        r = await self.op.client.get("/api/v1/routes", headers=self.proxy)
        assert r.status_code == 200, r.text
        return RouteTable.model_validate(r.json())

    async def backends(self, host: str) -> list[str]:
        """release ids of the backends listed for ``host``."""
        table = await self.routes()
        (route,) = [r for r in table.routes if r.host == host]
        return [str(b.release_id) for b in route.backends]

    async def deploy(self, **body: Any) -> dict[str, Any]:
        body.setdefault("image", self.image)
        body.setdefault("strategy", FAST)
        r = await self.op.client.post(
            f"/api/v1/projects/{self.project['slug']}/releases",
            headers=self.op.headers(),
            json=body,
        )
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def release(self, version: int) -> dict[str, Any]:
        r = await self.op.client.get(
            f"/api/v1/projects/{self.project['slug']}/releases/{version}",
            headers=self.op.headers(),
        )
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def status(self) -> dict[str, Any]:
        r = await self.op.client.get(
            f"/api/v1/projects/{self.project['slug']}/status", headers=self.op.headers()
        )
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def step(self) -> None:
        """One reconcile pass (unless an operator process runs its own loop), then every
        agent syncs."""
        self.steps += 1
        if self.drive_loop:
            await self.loop.run_once()
        for agent in self.agents:
            await agent.sync()

    async def converge(
        self,
        done: Callable[[], Awaitable[bool]],
        *,
        host: str | None = None,
        max_steps: int = 40,
        min_backends: int = 1,
        seconds: float = 0.0,
    ) -> list[list[str]]:
        """Step until ``done``; with ``host`` check at every step that its route lists at
        least ``min_backends`` backends, each running and healthy. Returns the route's
        backends (release ids) seen at each step. With ``seconds``, steps keep coming
        (0.1 s apart) until that much time has passed, for rules that wait on the clock
        (deadlines, back-off)."""
        seen: list[list[str]] = []
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        steps = 0
        while steps < max_steps or loop.time() < until:
            steps += 1
            if steps > max_steps:
                await asyncio.sleep(0.1)  # a clock rule: let PostgreSQL's now() move on
            await self.step()
            if host is not None:
                listed = await self.backends(host)
                seen.append(listed)
                assert len(listed) >= min_backends, (self.steps, listed)
                await self.check_listed_healthy(host)
            if await done():
                return seen
        raise AssertionError(f"did not converge in {steps} steps: {await self.status()}")

    async def check_listed_healthy(self, host: str) -> None:
        """Every backend the route lists is serving, running and healthy. The rows are read
        after the table: when they differ, the table must have moved on meanwhile (an
        operator process's own loop acts between the two reads; every change of what is
        listed bumps the table's version)."""
        table = await self.routes()
        (route,) = [r for r in table.routes if r.host == host]
        for backend in route.backends:
            rows = await self.op.sql(
                "SELECT state, health, serving FROM instances WHERE id = %s",
                (backend.instance_id,),
            )
            if rows != [("running", "healthy", True)]:
                later = await self.routes()
                assert later.version != table.version, (backend, rows)

    async def live(self) -> list[tuple[int, str, str, bool]]:
        """(version, state, health, serving) of every instance not terminated."""
        rows = await self.op.sql(
            "SELECT r.version, i.state, i.health, i.serving FROM instances i "
            "JOIN releases r ON r.id = i.release_id WHERE i.state <> 'terminated' "
            "AND i.desired_state = 'running' ORDER BY r.version, i.id"
        )
        return [(int(v), str(s), str(h), bool(sv)) for v, s, h, sv in rows]


async def platform(op: Operator, *, nodes: int = 2, vcpu: float = 4) -> Platform:
    agents = []
    verdicts = ByRelease()
    for number in range(nodes):
        node_id, token = await ready_node(op, vcpu=vcpu)
        agents.append(
            FakeAgent(op=op, node_id=node_id, token=token, number=number, verdict=verdicts)
        )
    image = await ready_image(op)
    r = await op.client.post(
        "/api/v1/projects", headers=op.headers(), json={"name": f"app {uuid.uuid4().hex[:6]}"}
    )
    assert r.status_code == 201, r.text
    proxy = op.headers(await op.token(Scope.PROXY))
    return Platform(
        op=op,
        agents=agents,
        image=image,
        project=r.json(),
        proxy=proxy,
        loop=build_reconcile_loop(op.deps),
        verdicts=verdicts,
    )


async def bind(p: Platform, host: str) -> None:
    r = await p.op.client.post(
        "/api/v1/domains",
        headers=p.op.headers(),
        json={"name": host, "project_id": p.project["id"], "environment": "production"},
    )
    assert r.status_code == 201, r.text
