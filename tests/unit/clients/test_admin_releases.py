"""AdminClient's release, event and log calls over a mock transport: paths, bodies, the
shared wire models, and the followed streams resuming with Last-Event-ID."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.unit.cli.wire_factories import release
from zeitwork.clients.admin import AdminClient
from zeitwork.clients.sse import Backoff
from zeitwork.core.errors import NotFound
from zeitwork.wire.admin import LogLine, LogNotice
from zeitwork.wire.releases import EnvChange, ReleaseCreate

PROJECT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def _event(seq: int, kind: str = "instance.placed") -> dict[str, object]:
    return {
        "seq": seq,
        "id": str(uuid.UUID(int=seq)),
        "created_at": "2026-12-07T03:00:00Z",
        "project_id": str(PROJECT),
        "project_environment_id": None,
        "release_id": None,
        "rollout_id": None,
        "instance_id": None,
        "node_id": None,
        "kind": kind,
        "level": "info",
        "message": f"event {seq}",
        "data": {},
    }


def _sse(*events: dict[str, object]) -> bytes:
    return b"".join(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> AdminClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://op")
    return AdminClient(
        base_url="http://op", token="t", http=http, stream_backoff=Backoff(0.001, 0.002)
    )


async def test_create_release_posts_only_what_was_given() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/projects/web/releases"
        bodies.append(json.loads(request.content))
        return httpx.Response(404, json={"detail": "no image img"})

    async with _client(handler) as client:
        with pytest.raises(NotFound, match="no image img"):
            await client.create_release("web", ReleaseCreate(image="img", replicas=2))
    assert bodies == [{"image": "img", "environment": "production", "replicas": 2}]


async def test_env_change_is_a_patch_with_secrets_apart() -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, json.loads(request.content)))
        return httpx.Response(422, json={"detail": "bad"})

    async with _client(handler) as client:
        with pytest.raises(Exception, match="bad"):
            await client.change_env("web", EnvChange(secrets={"KEY": "s"}, unset=["OLD"]))
    assert seen == [
        (
            "PATCH",
            {"environment": "production", "set": {}, "secrets": {"KEY": "s"}, "unset": ["OLD"]},
        )
    ]


async def test_follow_events_resumes_after_a_drop_and_a_restart() -> None:
    calls: list[tuple[str | None, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.headers.get("Last-Event-ID"), dict(request.url.params)))
        if len(calls) == 1:
            return httpx.Response(200, content=_sse(_event(1), _event(2)))
        if len(calls) == 2:
            return httpx.Response(503, json={"detail": "restarting"})
        if len(calls) == 3:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, content=_sse(_event(2), _event(3)))

    seen: list[int] = []
    async with _client(handler) as client:
        async for event in client.follow_events(filters={"project": "web"}):
            seen.append(event.seq)
            if event.seq == 3:
                break
    assert seen == [1, 2, 3]
    assert [c[0] for c in calls] == [None, "2", "2", "2"]
    assert calls[0][1] == {"project": "web", "follow": "true", "limit": "100"}


async def test_follow_events_raises_a_refusal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "no project nope"})

    async with _client(handler) as client:
        with pytest.raises(NotFound, match="no project nope"):
            async for _ in client.follow_events(filters={"project": "nope"}):
                pass


@pytest.mark.parametrize(
    ("media", "body"),
    [
        ("application/json", '[{"ts": "2026-12-07T03:00:00Z", "line": "a"}, {"notice": "n"}]'),
        ("application/x-ndjson", '{"ts": "2026-12-07T03:00:00Z", "line": "a"}\n{"notice": "n"}\n'),
        (
            "text/event-stream",
            'id: 1\ndata: {"ts": "2026-12-07T03:00:00Z", "line": "a"}\n\ndata: {"notice": "n"}\n\n',
        ),
    ],
)
async def test_logs_read_every_answer_format(media: str, body: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["since"] == "2026-12-07T02:50:00Z"
        return httpx.Response(200, content=body, headers={"content-type": media})

    async with _client(handler) as client:
        records = await client.logs("web", params={"since": "2026-12-07T02:50:00Z"})
    assert isinstance(records[0], LogLine) and records[0].line == "a"
    assert records[1] == LogNotice(notice="n")


async def test_releases_page_down_by_version() -> None:
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        top = int(request.url.params.get("before", "1002")) - 1
        versions = range(top, max(top - 1000, 0), -1)
        body = "[" + ",".join(release(v).model_dump_json() for v in versions) + "]"
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    async with _client(handler) as client:
        found = await client.releases("web", environment="staging")
    assert [r.version for r in found] == list(range(1001, 0, -1))
    assert queries == [
        {"environment": "staging", "limit": "1000"},
        {"environment": "staging", "limit": "1000", "before": "2"},
    ]


async def test_recent_events_keep_the_newest() -> None:
    afters: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        afters.append(str(after))
        seqs = range(after + 1, min(after + 1000, 1500) + 1)
        return httpx.Response(200, json=[_event(n) for n in seqs])

    async with _client(handler) as client:
        found = await client.recent_events(filters={"project": "web"}, count=3)
    assert [e.seq for e in found] == [1498, 1499, 1500]
    assert afters == ["0", "1000"]
