"""A scripted stand-in for the operator's admin API, served by uvicorn on a real socket (the
CLI's followed streams need a real connection), for the app verbs' unit tests. Each test sets
what the routes answer and reads back what the CLI asked."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tests.unit.cli.wire_factories import domain, project
from zeitwork.core.states import NodeState
from zeitwork.wire.admin import DomainOut, NodeOut, ProjectOut
from zeitwork.wire.releases import AppStatus, EnvOut, EventOut, ReleaseOut
from zeitwork.wire.routes import EdgePolicyOverride

Answer = Response | bytes


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": "Problem", "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def sse(*items: tuple[str | None, str]) -> bytes:
    """``(id, data)`` pairs as event-stream bytes."""
    out = []
    for event_id, data in items:
        out.append((f"id: {event_id}\n" if event_id else "") + f"data: {data}\n\n")
    return "".join(out).encode()


@dataclass
class FakeOperator:
    url: str = ""
    projects: list[ProjectOut] = field(default_factory=list)
    created: ReleaseOut | Response | None = None
    releases: list[ReleaseOut] = field(default_factory=list)
    release_after_polls: list[ReleaseOut] = field(default_factory=list)
    statuses: list[AppStatus] = field(default_factory=list)
    events: list[EventOut] | Response | None = None
    event_attempts: list[Answer] = field(default_factory=list)
    events_route_missing: bool = False
    log_attempts: list[Answer] = field(default_factory=list)
    env: EnvOut | None = None
    nodes: list[NodeOut] = field(default_factory=list)
    domains: list[DomainOut] = field(default_factory=list)
    seen: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)
    release_polls: int = 0
    status_polls: int = 0
    rollout_over: threading.Event = field(default_factory=threading.Event)

    def calls(self, method: str, path_end: str) -> list[tuple[dict[str, str], Any]]:
        return [(q, b) for m, p, q, b in self.seen if m == method and p.endswith(path_end)]

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            body = await request.body()
            parsed = json.loads(body) if body else None
            self.seen.append((request.method, request.url.path, dict(request.query_params), parsed))
            answer: Response = await call_next(request)
            return answer

        @api.get("/api/v1/projects")
        async def list_projects() -> Response:
            return _models(self.projects)

        @api.post("/api/v1/projects", status_code=201)
        async def create_project(request: Request) -> Response:
            made = project((await request.json())["name"])
            self.projects.append(made)
            return self._answer(made, 201)

        @api.post("/api/v1/projects/{project}/releases", status_code=201)
        async def deploy(project: str) -> Response:
            return self._answer(self.created, 201)

        @api.get("/api/v1/projects/{project}/releases")
        async def history(project: str) -> Response:
            return _json([r.model_dump(mode="json") for r in self.releases])

        @api.get("/api/v1/projects/{project}/releases/{version}")
        async def one_release(project: str, version: int) -> Response:
            self.release_polls += 1
            script = self.release_after_polls
            if self.rollout_over.is_set():
                return self._answer(script[-1])
            index = min(self.release_polls - 1, len(script) - 1)
            return self._answer(script[index])

        @api.get("/api/v1/projects/{project}/status")
        async def status(project: str) -> Response:
            if not self.statuses:
                return problem(404, f"project {project!r} does not exist")
            if not self.calls("POST", "/releases"):  # before the deploy: what serves now
                return self._answer(self.statuses[0])
            self.status_polls += 1
            index = min(self.status_polls - 1, len(self.statuses) - 1)
            if self.rollout_over.is_set():
                index = len(self.statuses) - 1
            return self._answer(self.statuses[index])

        @api.put("/api/v1/projects/{project}/scale")
        async def scale(project: str) -> Response:
            return self._answer(self.statuses[-1])

        @api.post("/api/v1/projects/{project}/rollback", status_code=201)
        async def rollback(project: str) -> Response:
            return self._answer(self.created, 201)

        @api.get("/api/v1/projects/{project}/env")
        async def get_env(project: str) -> Response:
            return self._answer(self.env)

        @api.patch("/api/v1/projects/{project}/env", status_code=201)
        async def change_env(project: str) -> Response:
            return self._answer(self.created, 201)

        @api.get("/api/v1/events")
        async def events(request: Request) -> Response:
            self.last_event_ids.append(request.headers.get("last-event-id"))
            if request.query_params.get("follow") != "true":
                if isinstance(self.events, Response):
                    return self.events
                after = int(request.query_params.get("after", "0"))
                found = [e for e in self.events or [] if e.seq > after]
                return _json([e.model_dump(mode="json") for e in found])
            if self.events_route_missing:
                return problem(404, "no such route")
            if not self.event_attempts:
                return StreamingResponse(_quiet(), media_type="text/event-stream")
            return self._stream(self.event_attempts.pop(0))

        @api.get("/api/v1/projects/{project}/logs")
        async def logs(request: Request) -> Response:
            self.last_event_ids.append(request.headers.get("last-event-id"))
            if not self.log_attempts:
                return problem(401, "token revoked")
            return self._stream(self.log_attempts.pop(0))

        @api.get("/api/v1/nodes")
        async def nodes() -> Response:
            return _models(self.nodes)

        @api.post("/api/v1/nodes/{node_id}/{verb}")
        async def drain(node_id: uuid.UUID, verb: str) -> Response:
            found = next(n for n in self.nodes if n.id == node_id)
            state = NodeState.DRAINING if verb == "drain" else NodeState.READY
            return self._answer(found.model_copy(update={"state": state}))

        @api.get("/api/v1/images")
        async def images() -> list[dict[str, Any]]:
            return []

        @api.get("/api/v1/instances")
        async def instances() -> list[dict[str, Any]]:
            return []

        @api.get("/api/v1/domains")
        async def domains() -> Response:
            return _models(self.domains)

        @api.put("/api/v1/domains/{domain_id}/edge-policy")
        async def set_edge_policy(domain_id: uuid.UUID, request: Request) -> Response:
            found = next(d for d in self.domains if d.id == domain_id)
            policy = EdgePolicyOverride.model_validate(await request.json())
            return self._answer(found.model_copy(update={"edge_policy": policy}))

        @api.post("/api/v1/domains", status_code=201)
        async def create_domain(request: Request) -> Response:
            body = await request.json()
            return self._answer(domain(body["name"], project_id=body["project_id"]), 201)

        return api

    def _answer(self, value: Any, status: int = 200) -> Response:
        if isinstance(value, Response):
            return value
        if value is None:
            return problem(404, "nothing scripted")
        return Response(value.model_dump_json(), status_code=status, media_type="application/json")

    def _stream(self, attempt: Answer) -> Response:
        if isinstance(attempt, Response):
            return attempt

        async def body() -> AsyncIterator[bytes]:
            yield attempt
            if b"rollout.succeeded" in attempt or b"rollout.failed" in attempt:
                self.rollout_over.set()

        return StreamingResponse(body(), media_type="text/event-stream")


async def _quiet() -> AsyncIterator[bytes]:
    """A followed stream with nothing new: keep-alives until the client goes away."""
    while True:
        yield b": keepalive\n\n"
        await asyncio.sleep(0.05)


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type="application/json")


def _models(items: list[Any]) -> Response:
    return _json([item.model_dump(mode="json") for item in items])


@contextmanager
def serving(fake: FakeOperator) -> Iterator[FakeOperator]:
    """Serve ``fake`` on 127.0.0.1 in a thread until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), log_config=None, access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fake operator did not start"
        time.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
