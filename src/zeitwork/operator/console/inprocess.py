"""Calls into the operator's own API inside the process, as a client would make them.

The console's pages and forms go through the same routes, validation, authentication and
problem+json answers as ``zeitwork`` and other clients, without a socket or an HTTP client:
one ASGI exchange with the app, the body buffered (no streams: the browser follows those
itself). Only for the console's own short requests.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.types import ASGIApp, Message

_HOST = b"console.internal"


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def problem(self) -> str:
        """The answer's error in one line (a problem's detail, else its title)."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for key in ("detail", "title"):
                if isinstance(body.get(key), str) and body[key]:
                    return str(body[key])
        return f"the operator answered {self.status}"


class InProcessApi:
    def __init__(self, *, app: ASGIApp) -> None:
        self._app = app

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> ApiAnswer:
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [
            (b"host", _HOST),
            (b"authorization", f"Bearer {token}".encode()),
            (b"accept", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(query or {}).encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("console.internal", 80),
        }
        sent = False
        done = asyncio.Event()
        status = 500
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        # its own task: the exchange runs in a copy of this context, so what the app's
        # middleware binds (structlog's request context) stays out of the caller's
        async def exchange() -> None:
            await self._app(scope, receive, send)

        running = asyncio.create_task(exchange())
        try:
            await running
        finally:
            done.set()
        return ApiAnswer(status=status, body=b"".join(chunks))
