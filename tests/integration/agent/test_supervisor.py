"""The supervisor in-process over the real oci driver, real network and real image cache:
transitions and reports, crash restarts with back-off, OOM, bad images, runtime errors,
capacity, health checks of real busybox containers (tcp, an http 500, one that never
listens, one whose network is removed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from tests.contract.runtime.harness import make_network, wait_http
from tests.images import ArchiveFiles, BuiltImage, Entry, app_entries, build_image, script_image
from zeitwork.agent.images import NodeImages
from zeitwork.agent.network import NodeNetwork, links
from zeitwork.agent.network.node import veth_name
from zeitwork.agent.plan import Tuning
from zeitwork.agent.state_store import StateStore
from zeitwork.agent.supervisor import Supervisor
from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import InsufficientCapacity
from zeitwork.core.resources import Resources
from zeitwork.core.states import HealthState, InstanceState
from zeitwork.images import ImageCache
from zeitwork.runtime.oci import OciDriver, RuncCli, become_subreaper, cgroups
from zeitwork.wire.agent import AssignedInstance, InstanceStatusReport

pytestmark = [pytest.mark.requires_root]
S = InstanceState


@dataclass
class Node:
    supervisor: Supervisor
    archives: ArchiveFiles
    network: NodeNetwork
    reports: list[tuple[uuid.UUID, InstanceStatusReport]] = field(default_factory=list)

    def assign(self, image: BuiltImage, **overrides: Any) -> AssignedInstance:
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "desired_state": "running",
            "image": self.archives.offer(image),
            "resources": {"vcpu": 0.25, "memory": 64},
            "default_port": 8080,
        }
        values.update(overrides)
        assignment = AssignedInstance.model_validate(values)
        self.supervisor.put_local(assignment)
        return assignment

    def states(self, instance_id: uuid.UUID) -> list[str]:
        """The reported states in order; a report that only updates a running instance's
        health (running after running) is not a transition and is left out."""
        states: list[str] = []
        for i, report in self.reports:
            if i == instance_id and not (report.state == S.RUNNING and states[-1:] == ["running"]):
                states.append(report.state.value)
        return states

    def last(self, instance_id: uuid.UUID) -> InstanceStatusReport:
        return [r for i, r in self.reports if i == instance_id][-1]

    async def wait_for(
        self, instance_id: uuid.UUID, predicate: Callable[[list[str]], bool], timeout: float = 20
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.states(instance_id)):
            assert loop.time() < deadline, f"reports so far: {self.states(instance_id)}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    suffix = uuid.uuid4().hex[:6]
    become_subreaper()  # as the agent does: exit statuses of containers come to us
    network = make_network(tmp_path / "net")
    await network.setup()
    driver = OciDriver(
        runc=RuncCli(root=tmp_path / "runc"),
        state_dir=tmp_path / "oci",
        cgroup_parent=f"zwtest-{suffix}",
    )
    cache = await ImageCache.open(root=tmp_path / "images", max_bytes=1 << 30)
    archives = ArchiveFiles()
    holder: list[Node] = []
    supervisor = Supervisor(
        driver=driver,
        network=network,
        images=NodeImages(cache=cache, operator=cast(OperatorClient, archives)),
        store=StateStore(root=tmp_path / "instances"),
        capacity=Resources.of(vcpu=2, memory_mib=1024),
        report=lambda i, r: holder[0].reports.append((i, r)),
        tuning=Tuning(max_restarts=2, backoff_base=0.2, backoff_cap=0.8),
        stop_grace=0.5,
        tick=0.05,
    )
    supervisor.assignments_known = True
    made = Node(supervisor=supervisor, archives=archives, network=network)
    holder.append(made)
    task = asyncio.create_task(supervisor.run())
    try:
        yield made
    finally:
        task.cancel()
        await supervisor.close()
        await driver.recover([])
        cgroups.remove(f"/zwtest-{suffix}")
        await network.cleanup(keep=set())
        await network.teardown()
        await cache.close()


async def test_start_reports_starting_then_running_with_address_and_serves(
    node: Node, busybox_image: BuiltImage
) -> None:
    assignment = node.assign(busybox_image)
    await node.wait_for(assignment.id, lambda s: "running" in s)
    assert node.states(assignment.id) == ["starting", "running"]
    running = node.last(assignment.id)
    assert running.ip_address is not None and running.port == 8080
    status, _ = await wait_http(f"http://{running.ip_address}:8080/", timeout=2)
    assert status == 200  # reported running only once it accepts connections

    node.supervisor.set_wanted_state(assignment.id, "stopped")
    await node.wait_for(assignment.id, lambda s: s[-1:] == ["stopped"])
    assert node.states(assignment.id)[-2:] == ["stopping", "stopped"]
    assert node.network.attachment(assignment.id) is None  # address released

    node.supervisor.remove(assignment.id)
    await node.wait_for(assignment.id, lambda s: s[-1:] == ["terminated"])
    assert assignment.id not in node.supervisor.records
    # the image is no longer referenced: the cache may evict it
    assert node.supervisor.images.cache.refs(assignment.image.digest) == 0


async def test_crash_loop_restarts_with_back_off_then_fails_with_reason(
    node: Node, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    crashing = script_image(tmp_path / "crash.tar", "echo boom; exit 3")
    assignment = node.assign(crashing)
    await node.wait_for(assignment.id, lambda s: "failed" in s, timeout=30)
    states = node.states(assignment.id)
    # start, exit -> restart 1, exit -> restart 2, exit -> crash loop
    assert states.count("failed") == 1 and states[-1] == "failed"
    restarts = [
        r.reason
        for i, r in node.reports
        if i == assignment.id and r.reason and "; restart " in r.reason
    ]
    assert restarts == [
        "exited with code 3; restart 1 in 0.2s",
        "exited with code 3; restart 2 in 0.4s",
    ]
    final = node.last(assignment.id)
    assert final.exit_code == 3
    assert final.reason is not None and "crash loop" in final.reason
    assert "boom" in final.log_tail
    assert node.supervisor.records[assignment.id].restarts == 2


async def test_restart_policy_never_fails_at_once_and_on_failure_stops_on_zero(
    node: Node, tmp_path: Path
) -> None:
    failing = script_image(tmp_path / "f.tar", "exit 4")
    clean = build_image(tmp_path / "c.tar", entrypoint=["/bin/true"], cmd=None)
    never = node.assign(failing, restart_policy="never")
    on_failure = node.assign(clean, restart_policy="on-failure")
    await node.wait_for(never.id, lambda s: "failed" in s)
    await node.wait_for(on_failure.id, lambda s: "stopped" in s)
    assert node.states(never.id) == ["starting", "running", "failed"] or node.states(never.id) == [
        "starting",
        "failed",
    ]
    assert node.last(never.id).exit_code == 4
    assert node.last(on_failure.id).exit_code == 0


async def test_oom_kill_is_reported(node: Node, tmp_path: Path) -> None:
    hungry = build_image(
        tmp_path / "oom.tar",
        entrypoint=["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        cmd=None,
    )
    assignment = node.assign(hungry, restart_policy="never", resources={"vcpu": 0.25, "memory": 16})
    await node.wait_for(assignment.id, lambda s: "failed" in s)
    final = node.last(assignment.id)
    assert final.oom_killed is True
    assert final.reason is not None and "out of memory" in final.reason


async def test_digest_mismatch_is_refused_and_fails_the_instance(
    node: Node, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    other = build_image(tmp_path / "other.tar", env=["PATH=/bin", "OTHER=1"])
    assignment = node.assign(busybox_image)
    # the "operator" serves a different archive than the digest the assignment names
    node.archives.files[assignment.image.id] = other.path
    await node.wait_for(assignment.id, lambda s: "failed" in s)
    reason = node.last(assignment.id).reason or ""
    assert "digest" in reason and busybox_image.digest in reason


async def test_runtime_error_fails_with_the_runtime_message(node: Node, tmp_path: Path) -> None:
    broken = build_image(tmp_path / "b.tar", entrypoint=["/no/such/binary"], cmd=None)
    assignment = node.assign(broken, restart_policy="never")
    await node.wait_for(assignment.id, lambda s: "failed" in s)
    reason = node.last(assignment.id).reason or ""
    assert "/no/such/binary" in reason
    assert node.network.attachment(assignment.id) is None


async def test_more_than_the_node_has_is_refused(node: Node, busybox_image: BuiltImage) -> None:
    with pytest.raises(InsufficientCapacity, match="memory"):
        node.assign(busybox_image, resources={"vcpu": 1, "memory": 4096})
    assert node.supervisor.records == {}


async def test_growing_a_running_instance_past_the_node_is_refused(
    node: Node, busybox_image: BuiltImage
) -> None:
    assignment = node.assign(busybox_image)
    await node.wait_for(assignment.id, lambda s: "running" in s)
    bigger = AssignedInstance.model_validate(
        assignment.model_dump() | {"resources": {"vcpu": 1, "memory": 4096}}
    )
    with pytest.raises(InsufficientCapacity, match="memory"):
        node.supervisor.put_local(bigger)
    record = node.supervisor.records[assignment.id]
    assert record.resources == Resources.of(vcpu=0.25, memory_mib=64)
    # the same size again (or smaller) is accepted while it runs
    node.supervisor.put_local(assignment)


async def test_the_bundle_holding_environment_values_is_private(
    node: Node, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    assignment = node.assign(busybox_image, environment_variables={"DB_PASSWORD": "hunter2"})
    await node.wait_for(assignment.id, lambda s: "running" in s)
    [config] = (tmp_path / "oci").glob("*/config.json")
    assert "hunter2" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600


def _health(report: InstanceStatusReport) -> HealthState | None:
    return report.health.state if report.health is not None else None


async def _report_where(
    node: Node,
    instance_id: uuid.UUID,
    predicate: Callable[[InstanceStatusReport], bool],
    timeout: float = 20.0,
) -> InstanceStatusReport:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for i, report in node.reports:
            if i == instance_id and predicate(report):
                return report
        seen = [(r.state.value, _health(r)) for i, r in node.reports if i == instance_id]
        assert loop.time() < deadline, f"reports so far: {seen}"
        await asyncio.sleep(0.02)


FAST_CHECK = {"interval": 0.2, "timeout": 1.0, "grace_period": 0, "unhealthy_threshold": 2}


async def test_a_listening_container_turns_healthy_on_the_default_tcp_check(
    node: Node, busybox_image: BuiltImage
) -> None:
    assignment = node.assign(busybox_image)
    report = await _report_where(node, assignment.id, lambda r: _health(r) == HealthState.HEALTHY)
    assert report.state == S.RUNNING
    assert report.health is not None and report.health.last is not None
    assert report.health.last.detail == "connected to :8080"
    assert report.health.last.latency_ms is not None


async def test_an_http_check_answered_500_is_unhealthy_with_the_status(
    node: Node, tmp_path: Path
) -> None:
    cgi = (
        "#!/bin/sh\n"
        'printf "HTTP/1.1 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n'
        '\\r\\nbroken\\n"\n'
    )
    image = build_image(
        tmp_path / "cgi.tar",
        layers=[
            [
                *app_entries(),
                Entry("www/cgi-bin", mode=0o755),
                Entry("www/cgi-bin/fail", cgi.encode(), mode=0o755),
            ]
        ],
    )
    check = {"type": "http", "path": "/cgi-bin/fail", **FAST_CHECK}
    assignment = node.assign(image, health_check=check)
    report = await _report_where(node, assignment.id, lambda r: _health(r) == HealthState.UNHEALTHY)
    assert report.state == S.RUNNING
    assert report.health is not None and report.health.last is not None
    assert report.health.last.detail == "GET /cgi-bin/fail -> 500"
    assert report.health.last.status_code == 500
    # never healthy: not restarted by the agent (the operator's deadline decides)
    assert node.supervisor.starts == 1


async def test_a_container_that_never_listens_is_unhealthy(
    node: Node, busybox_image: BuiltImage
) -> None:
    node.supervisor.ready_timeout = 1.0  # the start waits this long for a listener
    assignment = node.assign(
        busybox_image, command=["sleep", "600"], health_check={"type": "tcp", **FAST_CHECK}
    )
    report = await _report_where(node, assignment.id, lambda r: _health(r) == HealthState.UNHEALTHY)
    assert report.health is not None and report.health.last is not None
    assert report.health.last.detail == "connection refused on :8080"
    assert node.supervisor.starts == 1


async def test_a_container_whose_network_is_removed_is_restarted_and_serves_again(
    node: Node, busybox_image: BuiltImage
) -> None:
    assignment = node.assign(busybox_image, health_check={"type": "tcp", **FAST_CHECK})
    await _report_where(node, assignment.id, lambda r: _health(r) == HealthState.HEALTHY)
    # what another agent's clean-up did to an instance (issue 16): its veth is gone
    await asyncio.to_thread(links.delete_link, veth_name(assignment.id))
    restarted = await _report_where(
        node, assignment.id, lambda r: "restarted: health check failed" in (r.reason or "")
    )
    assert restarted.state == S.STARTING
    assert restarted.reason is not None and "timed out after 1 s" in restarted.reason
    after = len(node.reports)
    healthy = await _report_where(
        node,
        assignment.id,
        lambda r: (
            _health(r) == HealthState.HEALTHY
            and any(r is later for _, later in node.reports[after:])
        ),
    )
    assert node.supervisor.starts == 2
    assert healthy.ip_address is not None
    status, _ = await wait_http(f"http://{healthy.ip_address}:8080/", timeout=5)
    assert status == 200
