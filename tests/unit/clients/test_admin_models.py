"""AdminClient parses the shared models of ``zeitwork.wire.admin`` as a newer operator would
send them: unknown fields at any depth are ignored (an older CLI keeps working), a wrong
value is a clear ``ServiceUnavailable``; the operator's log records parse as the client's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.unit.cli.wire_factories import domain, node, project
from zeitwork.clients.admin import AdminClient, parse_log_record
from zeitwork.core.errors import ServiceUnavailable
from zeitwork.core.states import NodeState
from zeitwork.operator.services.logs import LabelledLine, Notice
from zeitwork.wire.admin import LogLine, LogNotice, NodeHeartbeatOut
from zeitwork.wire.common import CapacityModel
from zeitwork.wire.routes import CorsOverride, EdgePolicyOverride, PathRateLimit

T0 = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> AdminClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://op")
    return AdminClient(base_url="http://op", token="t", http=http)


def _answering(body: Any) -> AdminClient:
    return _client(lambda request: httpx.Response(200, json=body))


def _grown(value: Any) -> Any:
    """``value`` with a new field in every object, as a newer operator might send it."""
    if isinstance(value, dict):
        return {**{k: _grown(v) for k, v in value.items()}, "added_later": {"x": [1]}}
    if isinstance(value, list):
        return [_grown(v) for v in value]
    return value


async def test_new_fields_at_any_depth_are_ignored() -> None:
    capacity = CapacityModel(vcpu=2, memory=2048, disk=10)
    beat = NodeHeartbeatOut(capacity=capacity, used=capacity, available=capacity)
    sent = node("host-a").model_copy(update={"heartbeat": beat})
    body = _grown([sent.model_dump(mode="json")])
    assert body[0]["resources"]["added_later"] and body[0]["heartbeat"]["used"]["added_later"]
    async with _answering(body) as client:
        assert await client.nodes() == [sent]

    policy = EdgePolicyOverride(cors=CorsOverride(origins=["https://a.example"]))
    limits = [PathRateLimit(path_prefix="/login", rps=1.0)]
    sent_domain = domain("a.example", edge_policy=policy, path_rate_limits=limits)
    async with _answering(_grown([sent_domain.model_dump(mode="json")])) as client:
        assert await client.domains() == [sent_domain]

    sent_project = project("web")
    async with _answering(_grown(sent_project.model_dump(mode="json"))) as client:
        assert await client.create_project("web") == sent_project


async def test_states_parse_as_their_enums() -> None:
    body = node("host-a").model_dump(mode="json") | {"state": "draining"}
    async with _answering(body) as client:
        drained = await client.drain_node(uuid.uuid4())
    assert drained.state is NodeState.DRAINING


@pytest.mark.parametrize(
    "change",
    [{"state": "sleeping"}, {"resources": {"vcpu": "many", "memory": 1}}, {"id": None}],
)
async def test_a_wrong_value_is_service_unavailable(change: dict[str, Any]) -> None:
    body = node("host-a").model_dump(mode="json") | change
    async with _answering([body]) as client:
        with pytest.raises(ServiceUnavailable, match="operator sent an invalid NodeOut list"):
            await client.nodes()


def test_the_operators_log_records_parse_as_the_clients() -> None:
    line = LabelledLine(
        ts=T0,
        instance_id=uuid.uuid4(),
        node_id=uuid.uuid4(),
        release="v3",
        line='a "quoted" ü line',
        stream="stderr",
        partial=True,
    )
    assert parse_log_record(line.to_json()) == LogLine(
        ts=T0,
        instance_id=line.instance_id,
        node_id=line.node_id,
        release="v3",
        stream="stderr",
        line='a "quoted" ü line',
        partial=True,
    )
    notice = Notice("node x: unreachable, retrying")
    assert parse_log_record(notice.to_json()) == LogNotice(notice="node x: unreachable, retrying")
    grown = '{"notice": "n", "level": "warning"}'
    assert parse_log_record(grown) == LogNotice(notice="n")
