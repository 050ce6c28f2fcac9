"""The operator link's logic against a fake operator client (registration flows, report
ordering, retry and refusal, heartbeat arithmetic)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, cast

import pytest

from zeitwork.agent.operator_link import Credential, CredentialFile, OperatorLink, agent_url_for
from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import AuthenticationRequired, Conflict, ServiceUnavailable
from zeitwork.core.resources import Resources
from zeitwork.core.states import InstanceState
from zeitwork.wire.agent import (
    Assignments,
    InstanceStatusReport,
    NodeRegistered,
    NodeRegistration,
)


class FakeOperator:
    def __init__(self) -> None:
        self.token: str | None = None
        self.valid_tokens: set[str] = set()
        self.registrations: list[tuple[NodeRegistration, str | None]] = []
        self.reports: list[tuple[uuid.UUID, str]] = []
        self.fail_reports = 0
        self.refuse: set[str] = set()

    def use_token(self, token: str) -> None:
        self.token = token

    async def register(
        self, registration: NodeRegistration, *, join_token: str | None = None
    ) -> NodeRegistered:
        self.registrations.append((registration, join_token))
        if join_token is None and self.token not in self.valid_tokens:
            raise AuthenticationRequired("revoked")
        assert registration.id is not None
        token = f"node-{len(self.registrations)}" if join_token else None
        if token:
            self.valid_tokens.add(token)
        return NodeRegistered(node_id=registration.id, node_token=token)

    async def report_state(self, instance_id: uuid.UUID, report: InstanceStatusReport) -> None:
        if self.fail_reports:
            self.fail_reports -= 1
            raise ServiceUnavailable("operator is unreachable")
        if report.state.value in self.refuse:
            raise Conflict("illegal transition")
        self.reports.append((instance_id, report.state.value))


def _link(tmp_path: Path, fake: FakeOperator, **kwargs: Any) -> OperatorLink:
    values: dict[str, Any] = {
        "client": cast(OperatorClient, fake),
        "credentials": CredentialFile(tmp_path / "node.json"),
        "join_token": "join-secret",
        "node_id": None,
        "hostname": "h",
        "ip_address": "10.0.0.5",
        "region_id": None,
        "runtime": "oci",
        "capacity": Resources.of(vcpu=2, memory_mib=2048, disk_mib=1000),
        "used": lambda: Resources.of(vcpu=0.5, memory_mib=512),
        "statuses": list,
        "on_assignments": lambda _a: None,
        "retry_base": 0.01,
    }
    values.update(kwargs)
    return OperatorLink(**values)


async def test_first_registration_uses_the_join_token_and_keeps_the_credential(
    tmp_path: Path,
) -> None:
    fake = FakeOperator()
    link = _link(tmp_path, fake)
    await link.register()
    registration, join = fake.registrations[0]
    assert join == "join-secret"
    assert registration.runtime == "oci" and registration.resources.vcpu == 2
    stored = CredentialFile(tmp_path / "node.json").load()
    assert stored is not None and stored.node_token == "node-1"
    assert link.node_id == stored.node_id == registration.id

    # a restart: the stored credential is used, same node id, no join token
    again = _link(tmp_path, fake, join_token=None)
    await again.register()
    assert fake.registrations[1][1] is None
    assert fake.registrations[1][0].id == registration.id
    assert again.node_token == "node-1"


async def test_a_revoked_credential_falls_back_to_the_join_token(tmp_path: Path) -> None:
    fake = FakeOperator()
    node_id = uuid.uuid4()
    CredentialFile(tmp_path / "node.json").save(Credential(node_id, "revoked-token"))
    link = _link(tmp_path, fake)
    await link.register()
    assert [join for _, join in fake.registrations] == [None, "join-secret"]
    assert link.node_id == node_id
    assert CredentialFile(tmp_path / "node.json").load() == Credential(node_id, "node-2")


async def test_configured_node_id_wins(tmp_path: Path) -> None:
    fake = FakeOperator()
    wanted = uuid.uuid4()
    link = _link(tmp_path, fake, node_id=wanted)
    await link.register()
    assert fake.registrations[0][0].id == wanted


async def test_reports_keep_order_survive_outages_and_drop_refused_ones(tmp_path: Path) -> None:
    fake = FakeOperator()
    link = _link(tmp_path, fake)
    await link.register()
    a, b = uuid.uuid4(), uuid.uuid4()
    fake.fail_reports = 2
    fake.refuse = {"stopping"}
    for instance_id, state in (
        (a, "starting"),
        (b, "starting"),
        (a, "running"),
        (a, "stopping"),
        (a, "stopped"),
    ):
        link.report(instance_id, InstanceStatusReport(state=InstanceState(state)))
    task = asyncio.create_task(link.reports_loop())
    try:
        for _ in range(200):
            if link.pending_reports() == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert link.pending_reports() == 0
    assert [s for i, s in fake.reports if i == a] == ["starting", "running", "stopped"]
    assert [s for i, s in fake.reports if i == b] == ["starting"]


def test_heartbeat_body_reports_capacity_used_and_available(tmp_path: Path) -> None:
    link = _link(tmp_path, FakeOperator())
    body = link.heartbeat_body()
    assert body.capacity.vcpu == 2 and body.capacity.memory == 2048 and body.capacity.disk == 1000
    assert body.used.vcpu == 0.5 and body.used.memory == 512
    assert body.available.vcpu == 1.5 and body.available.memory == 1536
    assert body.runtime == "oci"


async def test_assignments_are_handed_over_once_per_version(tmp_path: Path) -> None:
    seen: list[int] = []
    versions = iter([1, 1, 2])

    class Polling(FakeOperator):
        async def wait_assignments(
            self, node_id: uuid.UUID, *, version: int | None, wait: float
        ) -> Assignments:
            await asyncio.sleep(0)
            try:
                current = next(versions)
            except StopIteration:
                await asyncio.Event().wait()
                raise
            return Assignments(node_id=node_id, version=current, instances=[])

    fake = Polling()
    link = _link(
        tmp_path,
        fake,
        on_assignments=lambda a: seen.append(a.version),
        resync_interval=3600,
    )
    await link.register()
    task = asyncio.create_task(link.assignments_loop())
    try:
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert seen == [1, 2]


@pytest.mark.parametrize("bad", ["{", '{"node_id": "x"}'])
def test_unreadable_credential_file_is_an_error(tmp_path: Path, bad: str) -> None:
    (tmp_path / "node.json").write_text(bad)
    with pytest.raises(Exception, match="unreadable"):
        CredentialFile(tmp_path / "node.json").load()


async def test_registration_carries_the_agent_url_and_token_every_time(tmp_path: Path) -> None:
    fake = FakeOperator()
    token = "t" * 43
    link = _link(tmp_path, fake, agent_url="http://10.0.0.5:8081", agent_token=token)
    await link.register()
    again = _link(
        tmp_path, fake, join_token=None, agent_url="http://10.0.0.5:8081", agent_token=token
    )
    await again.register()
    assert [(r.agent_url, r.agent_token) for r, _ in fake.registrations] == [
        ("http://10.0.0.5:8081", token),
        ("http://10.0.0.5:8081", token),
    ]


@pytest.mark.parametrize(
    ("ip", "port", "url"),
    [("10.0.0.5", 8081, "http://10.0.0.5:8081"), ("fd00::5", 9000, "http://[fd00::5]:9000")],
)
def test_agent_url_for(ip: str, port: int, url: str) -> None:
    assert agent_url_for(ip, port) == url
