"""The common request middleware: one string rule for every route, body limits, one log
event and a problem+json 500 for a route's bug, and a true 422 in /openapi.json."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from zeitwork.webapi import install_common

PROBLEM = "application/problem+json"


class Thing(BaseModel):
    name: str
    tags: list[str] = []


def _app() -> FastAPI:
    app = FastAPI()
    install_common(
        app, service="test", registry=CollectorRegistry(), readiness=[], body_limit=lambda _: 4096
    )

    @app.post("/things", status_code=201)
    async def create(thing: Thing) -> Thing:
        return thing

    @app.get("/things/{name}")
    async def get(name: str, q: str = "") -> dict[str, str]:
        return {"name": name, "q": q}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_fine_strings_pass(client: httpx.AsyncClient) -> None:
    ok = await client.post("/things", json={"name": "é 😀", "tags": ["a"]})
    assert ok.status_code == 201 and ok.json()["name"] == "é 😀"
    ok = await client.get("/things/x", params={"q": "y"})
    assert ok.json() == {"name": "x", "q": "y"}


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"name": "a\\u0000"}', "name"),
        (b'{"name": "x", "tags": ["ok", "\\ud800"]}', "tags.1"),
        (b'{"name": "x", "\\udc00": 1}', "\\udc00"),
    ],
)
async def test_a_json_body_with_nul_or_a_lone_surrogate_is_422(
    client: httpx.AsyncClient, content: bytes, field: str
) -> None:
    for headers in ({"content-type": "application/json"}, {}):
        response = await client.post("/things", content=content, headers=headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"].endswith("/invalid-input")
        assert problem["errors"][0]["field"] == field
        assert "x-request-id" in response.headers


async def test_query_and_path_parameters_with_nul_are_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/things/x?q=a%00b")
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "q", "message": "must not contain NUL characters (U+0000)"}
    ]
    response = await client.get("/things/a%00b")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path"
    assert response.json()["instance"] == "/things/a\\u0000b"


async def test_body_limit_still_applies_to_scanned_and_chunked_bodies(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"name": "' + b"x" * 5000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        yield big[:3000]
        yield big[3000:]

    response = await client.post(
        "/things", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_a_routes_bug_is_one_log_event_and_a_problem_500(
    client: httpx.AsyncClient,
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/boom")  # not raised through the transport
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert "a bug" not in response.text
    assert [entry["event"] for entry in logs] == ["request.unhandled_error"]


async def test_openapi_documents_422_as_problem_json(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    invalid = schema["paths"]["/things"]["post"]["responses"]["422"]
    assert invalid["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert {"Problem", "FieldError"} <= set(components)
