"""The console's in-process API caller against a small ASGI app (no operator)."""

from __future__ import annotations

import contextvars
import json
from typing import Any

from starlette.types import Receive, Scope, Send

from zeitwork.operator.console.inprocess import ApiAnswer, InProcessApi


class Echo:
    """Answers with what it was asked (status 201), or a problem for /fail."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        message = await receive()
        body = message["body"]
        if scope["path"] == "/fail":
            payload = json.dumps({"title": "Conflict", "detail": "not enough room"}).encode()
            status = 409
        else:
            payload = json.dumps(
                {
                    "method": scope["method"],
                    "query": scope["query_string"].decode(),
                    "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                    "body": json.loads(body) if body else None,
                }
            ).encode()
            status = 201
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": payload[:5], "more_body": True})
        await send({"type": "http.response.body", "body": payload[5:]})


async def test_a_call_carries_method_token_query_and_body() -> None:
    app = Echo()
    answer = await InProcessApi(app=app).call(
        "PUT", "/api/v1/x", token="zw_t", query={"limit": "20"}, body={"replicas": 3}
    )
    assert answer.status == 201 and answer.ok
    seen: dict[str, Any] = answer.json()
    assert seen["method"] == "PUT" and seen["query"] == "limit=20"
    assert seen["headers"]["authorization"] == "Bearer zw_t"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["body"] == {"replicas": 3}
    assert app.scopes[0]["path"] == "/api/v1/x"


async def test_a_get_sends_no_body_and_a_refusal_says_its_detail() -> None:
    answer = await InProcessApi(app=Echo()).call("GET", "/api/v1/x", token="t")
    assert answer.json()["body"] is None
    assert "content-type" not in answer.json()["headers"]
    failed = await InProcessApi(app=Echo()).call("POST", "/fail", token="t", body={})
    assert failed.status == 409 and not failed.ok
    assert failed.problem() == "not enough room"


def test_problem_without_a_problem_body() -> None:
    assert ApiAnswer(status=502, body=b"<html>").problem() == "the operator answered 502"
    assert ApiAnswer(status=400, body=b'{"title": "Bad"}').problem() == "Bad"
    assert ApiAnswer(status=204, body=b"").json() is None


async def test_what_the_app_binds_stays_in_its_exchange() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="caller")

    async def rebinding(scope: Scope, receive: Receive, send: Send) -> None:
        marker.set("app")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    answer = await InProcessApi(app=rebinding).call("GET", "/", token="t")
    assert answer.status == 204
    assert marker.get() == "caller"
