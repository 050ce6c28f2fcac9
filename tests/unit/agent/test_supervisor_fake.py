"""The supervisor over the fake runtime driver (no root): health checks against real
sockets, health in reports and heartbeats, liveness restarts (a failing check, a lost
network), the grace period, ``command`` overriding the image's, the per-instance stop
timeout. The image cache is the real one, fed with a real OCI archive."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from tests.images import ArchiveFiles, BuiltImage
from zeitwork.agent.images import NodeImages
from zeitwork.agent.plan import Tuning
from zeitwork.agent.state_store import StateStore
from zeitwork.agent.supervisor import Supervisor
from zeitwork.clients.operator import OperatorClient
from zeitwork.core.resources import Resources
from zeitwork.core.states import HealthState, InstanceState
from zeitwork.images import ImageCache
from zeitwork.runtime.fake import FakeDriver, FakeHost, LoopbackNetwork
from zeitwork.wire.agent import AssignedInstance, InstanceStatusReport

S = InstanceState
H = HealthState
FAST = {"interval": 0.1, "timeout": 0.5, "grace_period": 0}


@dataclass
class Node:
    supervisor: Supervisor
    host: FakeHost
    network: LoopbackNetwork
    archives: ArchiveFiles
    image: BuiltImage
    reports: list[tuple[uuid.UUID, InstanceStatusReport]] = field(default_factory=list)

    def assign(self, command: list[str], **overrides: Any) -> AssignedInstance:
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "desired_state": "running",
            "image": self.archives.offer(self.image),
            "resources": {"vcpu": 0.25, "memory": 64},
            "default_port": 8080,
            "command": command,
        }
        values.update(overrides)
        assignment = AssignedInstance.model_validate(values)
        self.supervisor.put_local(assignment)
        return assignment

    def of(self, instance_id: uuid.UUID) -> list[InstanceStatusReport]:
        return [r for i, r in self.reports if i == instance_id]

    async def wait_report(
        self,
        instance_id: uuid.UUID,
        predicate: Callable[[InstanceStatusReport], bool],
        timeout: float = 10.0,
    ) -> InstanceStatusReport:
        deadline = time.monotonic() + timeout
        while True:
            for report in self.of(instance_id):
                if predicate(report):
                    return report
            seen = [
                (r.state.value, r.health and r.health.state.value) for r in self.of(instance_id)
            ]
            assert time.monotonic() < deadline, f"reports so far: {seen}"
            await asyncio.sleep(0.01)


async def checks_seen(
    node: Node, instance_id: uuid.UUID, count: int, timeout: float = 10.0
) -> None:
    """Until the monitor has folded ``count`` more check results for the instance."""
    seen: set[float] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {len(seen)} checks seen"
        health = node.supervisor.health.health(instance_id)
        if health is not None and health.last is not None and health.last.checked_at:
            seen.add(health.last.checked_at)
        await asyncio.sleep(0.01)


def health_is(state: HealthState) -> Callable[[InstanceStatusReport], bool]:
    return lambda r: r.health is not None and r.health.state == state


@pytest.fixture
async def node(tmp_path: Path, busybox_image: BuiltImage) -> AsyncIterator[Node]:
    host = FakeHost()
    network = LoopbackNetwork(
        subnet=f"127.{uuid.uuid4().int % 200 + 20}.{uuid.uuid4().int % 250}.0/24"
    )
    cache = await ImageCache.open(root=tmp_path / "images", max_bytes=1 << 30)
    archives = ArchiveFiles()
    holder: list[Node] = []
    supervisor = Supervisor(
        driver=FakeDriver(host=host),
        network=network,
        images=NodeImages(cache=cache, operator=cast(OperatorClient, archives)),
        store=StateStore(root=tmp_path / "instances"),
        capacity=Resources.of(vcpu=4, memory_mib=2048),
        report=lambda i, r: holder[0].reports.append((i, r)),
        tuning=Tuning(max_restarts=2, backoff_base=0.05, backoff_cap=0.2),
        stop_grace=10.0,
        tick=0.05,
        ready_timeout=0.5,
    )
    supervisor.assignments_known = True
    made = Node(supervisor, host, network, archives, busybox_image)
    holder.append(made)
    task = asyncio.create_task(supervisor.run())
    try:
        yield made
    finally:
        task.cancel()
        await supervisor.close()
        await host.close()
        await cache.close()


async def test_default_tcp_check_makes_a_listening_instance_healthy_in_reports_and_heartbeats(
    node: Node,
) -> None:
    assignment = node.assign(["serve"])  # the image's busybox httpd is not what runs
    healthy = await node.wait_report(assignment.id, health_is(H.HEALTHY))
    assert healthy.state == S.RUNNING
    assert healthy.health is not None and healthy.health.last is not None
    assert healthy.health.last.detail == "connected to :8080"
    assert node.host.workload(assignment.id).program == "serve"
    (status,) = node.supervisor.statuses()
    assert status.health is not None and status.health.state == H.HEALTHY


async def test_http_500_is_reported_unhealthy_and_not_restarted_before_it_was_healthy(
    node: Node,
) -> None:
    check = {"type": "http", "path": "/health", "unhealthy_threshold": 2, **FAST}
    assignment = node.assign(["serve", "500"], health_check=check)
    report = await node.wait_report(assignment.id, health_is(H.UNHEALTHY))
    assert report.state == S.RUNNING
    assert report.health is not None and report.health.last is not None
    assert report.health.last.detail == "GET /health -> 500"
    assert report.health.last.status_code == 500
    await checks_seen(node, assignment.id, 4)  # more failed checks: same run, no restart
    assert node.supervisor.starts == 1
    assert node.supervisor.records[assignment.id].state == S.RUNNING


async def test_an_instance_that_never_listens_is_unhealthy_with_the_refusal(node: Node) -> None:
    assignment = node.assign(["sleep"], health_check={"type": "tcp", **FAST})
    report = await node.wait_report(assignment.id, health_is(H.UNHEALTHY))
    assert report.health is not None and report.health.last is not None
    assert report.health.last.detail == "connection refused on :8080"
    assert node.supervisor.starts == 1


async def test_liveness_restarts_an_instance_that_turned_unhealthy(node: Node) -> None:
    check = {"type": "http", "path": "/x", "unhealthy_threshold": 3, **FAST}
    assignment = node.assign(["serve"], health_check=check)
    await node.wait_report(assignment.id, health_is(H.HEALTHY))
    first_pid = node.host.workload(assignment.id).pid
    node.host.answer_with(assignment.id, 500)
    restarted = await node.wait_report(
        assignment.id, lambda r: r.state == S.STARTING and "restarted" in (r.reason or "")
    )
    assert restarted.reason is not None
    assert restarted.reason.startswith(
        "restarted: health check failed 3 times: GET /x -> 500; restart 1 in"
    )
    # the unhealthy state reached the operator before the restart (the route drops it)
    states = [(r.state, r.health and r.health.state) for r in node.of(assignment.id)]
    assert (S.RUNNING, H.UNHEALTHY) in states

    # a new run, which the fake answers with 200 again: healthy again
    def new_run(report: InstanceStatusReport) -> bool:
        workload = node.host.workloads.get(assignment.id)
        return health_is(H.HEALTHY)(report) and workload is not None and workload.pid != first_pid

    await node.wait_report(assignment.id, new_run)
    assert node.supervisor.starts == 2


async def test_an_instance_whose_network_is_gone_is_restarted_on_a_fresh_attachment(
    node: Node,
) -> None:
    assignment = node.assign(["serve"], health_check={"type": "tcp", **FAST})
    await node.wait_report(assignment.id, health_is(H.HEALTHY))
    node.host.cut_network(assignment.id)
    restarted = await node.wait_report(assignment.id, lambda r: "restarted" in (r.reason or ""))
    assert "connection refused on :8080" in (restarted.reason or "")
    assert assignment.id in node.network.detached
    second = await node.wait_report(
        assignment.id, lambda r: node.supervisor.starts == 2 and health_is(H.HEALTHY)(r)
    )
    assert second.state == S.RUNNING


async def test_liveness_failure_with_restart_policy_never_ends_failed(node: Node) -> None:
    check = {"type": "http", "unhealthy_threshold": 1, **FAST}
    assignment = node.assign(["serve"], health_check=check, restart_policy="never")
    await node.wait_report(assignment.id, health_is(H.HEALTHY))
    node.host.answer_with(assignment.id, 503)
    failed = await node.wait_report(assignment.id, lambda r: r.state == S.FAILED)
    assert failed.reason == (
        "health check failed once: GET / -> 503; not restarted (restart policy never)"
    )
    assert node.supervisor.starts == 1


async def test_failures_in_the_grace_period_do_not_count(node: Node) -> None:
    check = {"type": "tcp", "interval": 0.1, "unhealthy_threshold": 1, "grace_period": 30}
    assignment = node.assign(["sleep"], health_check=check)
    await node.wait_report(assignment.id, lambda r: r.state == S.RUNNING)
    await checks_seen(node, assignment.id, 4)  # refused checks, all within the grace period
    health = node.supervisor.health.health(assignment.id)
    assert health is not None and health.state == H.UNKNOWN
    assert health.last is not None and health.last.detail == "connection refused on :8080"
    assert health.consecutive_failures == 0


async def test_none_is_healthy_once_running(node: Node) -> None:
    assignment = node.assign(["sleep"], health_check={"type": "none"})
    report = await node.wait_report(assignment.id, lambda r: r.state == S.RUNNING)
    assert report.health is not None and report.health.state == H.HEALTHY


async def test_command_overrides_the_image_and_its_exit_is_reported(node: Node) -> None:
    assignment = node.assign(["exit", "3"], restart_policy="never")
    failed = await node.wait_report(assignment.id, lambda r: r.state == S.FAILED)
    assert failed.exit_code == 3
    assert failed.reason == "exited with code 3"


async def test_the_instance_stop_timeout_bounds_the_stop(node: Node) -> None:
    # the agent bound (stop_grace) is 10 s here; this instance asks for 0.2 s
    assignment = node.assign(["sleep"], health_check={"type": "none"}, stop_timeout=0.2)
    await node.wait_report(assignment.id, lambda r: r.state == S.RUNNING)
    began = time.monotonic()
    node.supervisor.set_wanted_state(assignment.id, "stopped")
    stopped = await node.wait_report(assignment.id, lambda r: r.state == S.STOPPED, timeout=5)
    assert time.monotonic() - began < 2.0
    assert stopped.exit_code == 137  # it ignored SIGTERM: killed after the stop timeout
    assert stopped.health is None


async def test_the_agent_api_takes_command_and_check_and_shows_health(node: Node) -> None:
    import httpx
    from prometheus_client import CollectorRegistry

    from zeitwork.agent.api import create_app

    async def info() -> dict[str, Any]:
        return {}

    app = create_app(
        supervisor=node.supervisor,
        tokens=lambda: ["own-token"],
        node_info=info,
        registry=CollectorRegistry(),
    )
    image_id = uuid.uuid4()
    node.archives.files[image_id] = node.image.path
    body = {
        "image": {"id": str(image_id), "name": "app", "digest": node.image.digest, "size": 1},
        "resources": {"vcpu": 0.25, "memory": 64},
        "default_port": 8080,
        "command": ["serve", "503"],
        "health_check": {"type": "http", "path": "/ready", "unhealthy_threshold": 1, **FAST},
        "stop_timeout": 0.5,
    }
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": "Bearer own-token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://a", headers=headers) as api:
        created = await api.post("/instances", json=body)
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        deadline = time.monotonic() + 10
        while True:
            view = (await api.get(f"/instances/{instance_id}")).json()
            if view["health"] and view["health"]["state"] == "unhealthy":
                break
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.02)
    assert view["state"] == "running"
    assert view["health"]["last"]["detail"] == "GET /ready -> 503"
    assert node.supervisor.records[uuid.UUID(instance_id)].assignment.stop_timeout == 0.5
