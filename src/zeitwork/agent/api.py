"""The node agent's HTTP API (JSON, snake_case).

Authentication: ``Authorization: Bearer <token>`` where the token is this node's credential
(the one the operator issued at registration, kept in ``$ZEITWORK_DATA_DIR/agent/node.json``)
or the optional ``ZEITWORK_AGENT_TOKEN`` (an admin token for the agent alone, useful without
an operator). ``/health``, ``/health/ready`` and ``/metrics`` need no token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ConfigDict, Field

from zeitwork.agent.supervisor import Record, Supervisor
from zeitwork.core.errors import AuthenticationRequired, NotFound
from zeitwork.core.ids import parse_id
from zeitwork.core.resources import Resources
from zeitwork.core.states import InstanceState
from zeitwork.runtime.base import LogEntry
from zeitwork.webapi import install_common
from zeitwork.wire.agent import AssignedInstance
from zeitwork.wire.common import CapacityModel
from zeitwork.wire.health import InstanceHealth


class InstanceView(BaseModel):
    id: uuid.UUID
    state: InstanceState
    desired_state: str
    source: Literal["operator", "local"]
    image_digest: str
    ip_address: str | None
    port: int
    exit_code: int | None
    oom_killed: bool
    reason: str | None
    restarts: int
    restart_policy: str
    vcpu: float
    memory: int
    log_tail: list[str]
    workload: str | None = Field(
        default=None,
        description="identifies the current run of the workload (another after each start); "
        "None when none exists. The operator's log fan-in tells a new output from the same",
    )
    health: InstanceHealth | None = None


class StateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["running", "stopped"]


class ResourcesView(BaseModel):
    capacity: CapacityModel
    used: CapacityModel
    available: CapacityModel


class NewInstance(AssignedInstance):
    """Body of ``POST /instances``: an assignment; ``id`` is generated when omitted."""

    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    desired_state: Literal["running", "stopped", "terminated"] = "running"


LogFormat = Literal["text", "ndjson"]
NDJSON_MEDIA_TYPE = "application/x-ndjson"


def log_text(entry: LogEntry) -> bytes:
    return f"{entry.text}\n".encode()


def log_ndjson(entry: LogEntry) -> bytes:
    record = {"ts": entry.ts, "stream": entry.stream, "line": entry.text, "partial": entry.partial}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _capacity(resources: Resources) -> CapacityModel:
    return CapacityModel(
        vcpu=max(0.0, resources.vcpu),
        memory=max(0, resources.memory_mib),
        disk=max(0, resources.disk_mib),
    )


def _view(supervisor: Supervisor, record: Record) -> InstanceView:
    wants = record.override or record.assignment.desired_state
    return InstanceView(
        id=record.instance_id,
        state=record.state,
        desired_state=wants,
        source="local" if record.source == "local" else "operator",
        image_digest=record.assignment.image.digest,
        ip_address=record.address,
        port=record.assignment.default_port,
        exit_code=record.exit_code,
        oom_killed=record.oom_killed,
        reason=record.reason,
        restarts=record.restarts,
        restart_policy=record.assignment.restart_policy,
        vcpu=record.assignment.resources.vcpu,
        memory=record.assignment.resources.memory,
        log_tail=record.log_tail,
        health=supervisor.health.health(record.instance_id)
        if record.state == InstanceState.RUNNING
        else None,
        workload=_workload_id(record),
    )


def _workload_id(record: Record) -> str | None:
    if record.handle is None:
        return None
    data = json.dumps(dict(record.handle.data), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def create_app(
    *,
    supervisor: Supervisor,
    tokens: Callable[[], list[str]],
    node_info: Callable[[], Awaitable[dict[str, Any]]],
    registry: CollectorRegistry,
    readiness: list[tuple[str, Callable[[], Awaitable[str | None]]]] | None = None,
) -> FastAPI:
    app = FastAPI(title="Zeitwork node agent", docs_url=None, redoc_url=None, openapi_url=None)
    by_state = Gauge(
        "agent_instances",
        "Instances on this node by state",
        ["state"],
        namespace="zeitwork",
        registry=registry,
    )
    starts = Gauge(
        "agent_instance_starts",
        "Workload starts made by this agent process",
        namespace="zeitwork",
        registry=registry,
    )

    async def refresh_gauges() -> None:
        counts = dict.fromkeys((state.value for state in InstanceState), 0)
        for record in supervisor.records.values():
            counts[record.state.value] += 1
        for state, count in counts.items():
            by_state.labels(state).set(count)
        starts.set(supervisor.starts)

    install_common(
        app,
        service="node-agent",
        registry=registry,
        readiness=readiness or [],
        before_metrics=refresh_gauges,
    )

    async def authenticated(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthenticationRequired("a bearer token is required (the node credential)")
        allowed = [token for token in tokens() if token]
        if not allowed:
            raise AuthenticationRequired(
                "the agent has no credential yet (not registered, no ZEITWORK_AGENT_TOKEN)"
            )
        # compared as bytes: compare_digest refuses non-ASCII str (a TypeError, a 500)
        given = presented.strip().encode()
        if not any(secrets.compare_digest(given, token.encode()) for token in allowed):
            raise AuthenticationRequired("the token is not valid for this node")

    api = APIRouter(dependencies=[Depends(authenticated)])

    def record_of(instance_id: str) -> Record:
        parsed = parse_id(instance_id, what="instance id")
        record = supervisor.records.get(parsed)
        if record is None:
            raise NotFound(f"instance {parsed} is not on this node")
        return record

    @api.get("/node/info")
    async def info() -> dict[str, Any]:
        return await node_info()

    @api.get("/node/resources")
    async def resources() -> ResourcesView:
        used = supervisor.used()
        return ResourcesView(
            capacity=_capacity(supervisor.capacity),
            used=_capacity(used),
            available=_capacity(supervisor.capacity - used),
        )

    @api.get("/instances")
    async def list_instances() -> list[InstanceView]:
        return [_view(supervisor, r) for _, r in sorted(supervisor.records.items())]

    @api.post("/instances", status_code=201)
    async def create_instance(body: NewInstance) -> InstanceView:
        assignment = AssignedInstance.model_validate(body.model_dump())
        record = supervisor.put_local(assignment)
        return _view(supervisor, record)

    @api.get("/instances/{instance_id}")
    async def get_instance(instance_id: str) -> InstanceView:
        return _view(supervisor, record_of(instance_id))

    @api.put("/instances/{instance_id}/state")
    async def change_state(instance_id: str, body: StateChange) -> InstanceView:
        record = record_of(instance_id)
        supervisor.set_wanted_state(record.instance_id, body.state)
        return _view(supervisor, record)

    @api.delete("/instances/{instance_id}", status_code=202)
    async def delete_instance(instance_id: str) -> Response:
        record = record_of(instance_id)
        supervisor.remove(record.instance_id)
        return Response(status_code=202)

    @api.get("/instances/{instance_id}/logs")
    async def logs(
        instance_id: str,
        tail: Annotated[int, Query(ge=0, le=10_000)] = 100,
        follow: bool = False,
        format: Annotated[LogFormat, Query()] = "text",
    ) -> Response:
        """``text``: the lines as written; ``ndjson``: one object per line, ``{"ts": "<RFC
        3339, ns>" or null, "stream": "stdout"|"stderr", "line": ..., "partial": bool}``
        (``ts`` is when the line was written; null for output kept before timestamps)."""
        record = record_of(instance_id)
        encode = log_ndjson if format == "ndjson" else log_text
        media = NDJSON_MEDIA_TYPE if format == "ndjson" else "text/plain"
        if not follow:
            entries = supervisor.logs(record.instance_id, tail=tail, follow=False)
            body = b"".join([encode(entry) async for entry in entries])
            return Response(body, media_type=media)

        async def stream() -> AsyncIterator[bytes]:
            async for entry in supervisor.logs(record.instance_id, tail=tail, follow=True):
                yield encode(entry)

        return StreamingResponse(stream(), media_type=media)

    app.include_router(api)
    return app
