"""``GET /api/v1/events`` on a real PostgreSQL and a real operator: pages, filters, bad
input, following over Server-Sent Events with resumption by ``Last-Event-ID``, streams that
end when their client goes or the operator drains, and retention."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import PROBLEM
from tests.integration.operator.live_server import live_operator
from zeitwork.clients.admin import AdminClient
from zeitwork.clients.sse import Backoff
from zeitwork.operator.db import events
from zeitwork.operator.services.events import EventPruner


async def _project(op: Operator, slug: str) -> uuid.UUID:
    project = await op.deps.projects.create_project(
        name=slug, slug=slug, github_repo=None, default_branch="main"
    )
    return project.id


async def _record(op: Operator, kind: str, message: str, **ids: Any) -> int:
    async with op.deps.db.transaction() as conn:
        return await events.record(conn, kind, message, **ids)


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    """(id, data) of each SSE message (comments and retry lines skipped)."""
    event_id: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def _take(
    stream: AsyncIterator[tuple[str | None, dict[str, Any]]], count: int
) -> list[tuple[str | None, dict[str, Any]]]:
    got: list[tuple[str | None, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        async for item in stream:
            got.append(item)
            if len(got) == count:
                break
    return got


async def test_pages_in_seq_order_with_a_next_link(operator: Operator) -> None:
    app = await _project(operator, "shop")
    seqs = [await _record(operator, "release.created", f"v{n}", project_id=app) for n in (1, 2, 3)]
    r = await operator.client.get("/api/v1/events", params={"limit": 2}, headers=operator.headers())
    assert r.status_code == 200, r.text
    assert [e["seq"] for e in r.json()] == seqs[:2]
    assert r.json()[0]["message"] == "v1" and r.json()[0]["project_id"] == str(app)
    assert f"after={seqs[1]}" in r.headers["link"]
    r = await operator.client.get(
        "/api/v1/events", params={"limit": 2, "after": seqs[1]}, headers=operator.headers()
    )
    assert [e["seq"] for e in r.json()] == seqs[2:]
    assert "link" not in r.headers


async def test_filters_by_project_slug_kind_and_instance(operator: Operator) -> None:
    shop, blog = await _project(operator, "shop"), await _project(operator, "blog")
    instance = uuid.uuid4()
    await _record(operator, "release.created", "shop v1", project_id=shop)
    await _record(operator, "instance.started", "started", project_id=shop, instance_id=instance)
    await _record(operator, "instance.started", "blog started", project_id=blog)

    async def messages(**params: Any) -> list[str]:
        r = await operator.client.get("/api/v1/events", params=params, headers=operator.headers())
        assert r.status_code == 200, r.text
        return [e["message"] for e in r.json()]

    assert await messages(project="shop") == ["shop v1", "started"]
    assert await messages(project=str(blog)) == ["blog started"]
    assert await messages(kind="instance.") == ["started", "blog started"]
    assert await messages(project="shop", kind="release.created") == ["shop v1"]
    assert await messages(instance=str(instance)) == ["started"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"project": "nope"}, 404),
        ({"project": str(uuid.uuid4())}, 404),
        ({"project": "shop", "environment": "staging"}, 404),
        ({"project": "shop", "release": "v9"}, 404),
        ({"project": "shop", "release": "latest"}, 422),
        ({"environment": "production"}, 422),
        ({"kind": "Bad Kind"}, 422),
        ({"after": "-1"}, 422),
        ({"limit": "0"}, 422),
        ({"instance": "not-an-id"}, 422),
    ],
)
async def test_bad_filters_are_clear_problems(
    operator: Operator, params: dict[str, str], status: int
) -> None:
    await _project(operator, "shop")
    await operator.sql(
        "INSERT INTO project_environments (project_id, name) "
        "SELECT id, 'production' FROM projects WHERE slug = 'shop'"
    )
    r = await operator.client.get("/api/v1/events", params=params, headers=operator.headers())
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_needs_an_admin_token(operator: Operator) -> None:
    r = await operator.client.get("/api/v1/events")
    assert r.status_code == 401


async def test_follow_resumes_by_last_event_id_without_duplicates(operator: Operator) -> None:
    app = await _project(operator, "shop")
    first = [await _record(operator, "release.created", f"old {n}", project_id=app) for n in (1, 2)]
    async with live_operator(operator) as url, httpx.AsyncClient(base_url=url) as client:
        params = {"follow": "true", "project": "shop", "after": "0"}
        async with client.stream(
            "GET", "/api/v1/events", params=params, headers=operator.headers()
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = _sse(response.aiter_lines())
            got = await _take(stream, 2)
            assert [i for i, _ in got] == [str(s) for s in first]
            live = await _record(operator, "instance.started", "live", project_id=app)
            await _record(operator, "instance.started", "other app")  # filtered out
            ((event_id, data),) = await _take(stream, 1)
            assert (event_id, data["message"], data["seq"]) == (str(live), "live", live)
        # while nobody follows: two more; a reconnection gets exactly those
        missed = [
            await _record(operator, "instance.healthy", f"m{n}", project_id=app) for n in (1, 2)
        ]
        headers = {**operator.headers(), "Last-Event-ID": str(live)}
        async with client.stream(
            "GET", "/api/v1/events", params=params, headers=headers
        ) as response:
            got = await _take(_sse(response.aiter_lines()), 2)
            assert [i for i, _ in got] == [str(s) for s in missed]


async def test_follow_without_a_cursor_starts_with_the_newest(operator: Operator) -> None:
    app = await _project(operator, "shop")
    seqs = [await _record(operator, "release.created", f"v{n}", project_id=app) for n in range(5)]
    async with live_operator(operator) as url, httpx.AsyncClient(base_url=url) as client:
        params = {"follow": "true", "project": "shop", "limit": "2"}
        async with client.stream(
            "GET", "/api/v1/events", params=params, headers=operator.headers()
        ) as response:
            got = await _take(_sse(response.aiter_lines()), 2)
    assert [i for i, _ in got] == [str(s) for s in seqs[-2:]]


async def test_follow_ends_when_the_client_goes_away(operator: Operator) -> None:
    async with live_operator(operator) as url, httpx.AsyncClient(base_url=url) as client:
        with capture_logs() as logs:
            async with client.stream(
                "GET", "/api/v1/events", params={"follow": "true"}, headers=operator.headers()
            ) as response:
                assert response.status_code == 200
                await anext(response.aiter_raw())  # the retry line: the stream is open
            deadline = asyncio.get_running_loop().time() + 10
            while not any(e["event"] == "stream.closed" for e in logs):
                assert asyncio.get_running_loop().time() < deadline, logs
                await asyncio.sleep(0.02)
    closed = [e for e in logs if e["event"] == "stream.closed"]
    assert closed[0]["what"] == "events" and closed[0]["ended"] == "client_gone"


async def test_follow_ends_cleanly_when_the_operator_drains(operator: Operator) -> None:
    async with (
        live_operator(operator) as url,
        httpx.AsyncClient(base_url=url) as client,
        client.stream(
            "GET", "/api/v1/events", params={"follow": "true"}, headers=operator.headers()
        ) as response,
    ):
        chunks = response.aiter_raw()
        await anext(chunks)
        operator.deps.stopping.set()
        async with asyncio.timeout(10):
            rest = [chunk async for chunk in chunks]
    assert b"data:" not in b"".join(rest)


async def test_prune_keeps_recent_events_within_the_count(operator: Operator) -> None:
    for n in range(5):
        await _record(operator, "release.created", f"e{n}")
    await operator.sql(
        "UPDATE events SET created_at = now() - interval '8 days' WHERE message = 'e0'"
    )
    pruner = EventPruner(store=operator.deps.events, max_age=7 * 86400, max_count=3)
    assert await pruner.prune_once() == 2  # e0 by age, e1 by count
    rows = await operator.sql("SELECT message FROM events ORDER BY seq")
    assert [r[0] for r in rows] == ["e2", "e3", "e4"]


async def test_a_follower_survives_an_operator_restart_without_duplicates(
    operator_factory: OperatorFactory,
) -> None:
    """The CLI's client follows, the operator drains and a new one starts on the same port
    and database: the client resumes with Last-Event-ID and gets each event once."""
    first = await operator_factory()
    app = await _project(first, "shop")
    before = [await _record(first, "release.created", f"b{n}", project_id=app) for n in (1, 2)]
    got: list[int] = []
    async with live_operator(first) as url:
        port = int(url.rsplit(":", 1)[1])
        client = AdminClient(
            base_url=url, token=first.admin_token, stream_backoff=Backoff(initial=0.05)
        )
        stream = client.follow_events(filters={"project": "shop"}, after=0)
        async with asyncio.timeout(10):
            got += [(await anext(stream)).seq for _ in before]
        first.deps.stopping.set()  # drains: the stream ends, the client starts reconnecting
    during = [await _record(first, "instance.started", f"d{n}", project_id=app) for n in (1, 2)]
    second = await operator_factory()
    async with live_operator(second, port=port):
        after = await _record(second, "instance.healthy", "a1", project_id=app)
        async with asyncio.timeout(15):
            got += [(await anext(stream)).seq for _ in range(3)]
        await stream.aclose()
        await client.aclose()
    assert got == [*before, *during, after]
