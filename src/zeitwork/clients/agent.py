"""The operator's calls to node agents (logs fan-in), with the credential each agent sent at
registration (``NodeRegistration.agent_token``; never a user's token).

``AgentClient`` reads one instance's state and output from the agent's API
(``GET /instances/{id}``, ``GET /instances/{id}/logs?tail=&follow=&format=ndjson``); each line
comes with the time it was written and its stream (``AgentLogLine``). An agent that answers
plain text (one from before timestamps) gives lines without a time, ``stdout``.
``AgentClients`` keeps one pooled client per agent address and credential for the operator's
lifetime.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.core.errors import ServiceUnavailable
from zeitwork.core.states import InstanceState

MAX_TAIL = 10_000
"""The most lines the agent's log API returns from an instance's history."""
MAX_LINE_BYTES = 16 * 1024
"""A longer line (no line break for that long) is cut into pieces of this size."""
MAX_RECORD_BYTES = 8 * MAX_LINE_BYTES
"""The longest NDJSON record taken whole (a 16 KiB piece of text, JSON-escaped)."""
NDJSON = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class AgentLogLine:
    """One line of an instance's output as its agent sent it."""

    text: str
    stream: Literal["stdout", "stderr"] = "stdout"
    ts: datetime | None = None  # when it was written; None: not recorded (read time applies)
    partial: bool = False  # it goes on in the next line (a piece of a longer one)


def parse_log_record(data: bytes) -> AgentLogLine:
    """An NDJSON record of the agent's log API; a malformed one is kept as text (pure)."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("line"), str):
        return AgentLogLine(text=data.decode(errors="replace"))
    ts: datetime | None = None
    stamp = value.get("ts")
    if isinstance(stamp, str):
        try:
            ts = datetime.fromisoformat(stamp)
        except ValueError:
            ts = None
        if ts is not None and ts.tzinfo is None:
            ts = None
    return AgentLogLine(
        text=value["line"],
        stream="stderr" if value.get("stream") == "stderr" else "stdout",
        ts=ts,
        partial=value.get("partial") is True,
    )


class AgentInstance(BaseModel):
    """The part of the agent's instance view the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    state: InstanceState
    restarts: int = 0
    exit_code: int | None = None
    workload: str | None = None  # changes with every start (None: none runs, or an old agent)


def split_lines(pending: bytes, chunk: bytes, *, max_bytes: int) -> tuple[list[bytes], bytes]:
    """Complete lines of ``pending + chunk`` (without their ``\\n``) and the rest; a rest
    longer than ``max_bytes`` is cut into lines of that size (pure)."""
    data = pending + chunk
    *complete, rest = data.split(b"\n")
    lines: list[bytes] = []
    for whole in complete:
        piece = whole
        while len(piece) > max_bytes:
            lines.append(piece[:max_bytes])
            piece = piece[max_bytes:]
        lines.append(piece.removesuffix(b"\r"))
    while len(rest) > max_bytes:
        lines.append(rest[:max_bytes])
        rest = rest[max_bytes:]
    return lines, rest


class AgentClient:
    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        quiet_timeout: float = 60.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http_client(
            ClientOptions(
                base_url=self.base_url,
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_connections=100,
            )
        )
        self._connect_timeout = connect_timeout
        self._quiet_timeout = quiet_timeout
        self._max_line = max_line_bytes
        self._peer = f"agent {self.base_url}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def instance(self, instance_id: uuid.UUID) -> AgentInstance:
        with map_http_errors(self._peer):
            response = await self._http.get(f"/instances/{instance_id}")
        raise_for_status(response)
        try:
            return AgentInstance.model_validate_json(response.content)
        except ValueError as exc:
            raise ServiceUnavailable(f"{self._peer} sent an invalid instance view") from exc

    async def log_tail(self, instance_id: uuid.UUID, *, tail: int) -> list[AgentLogLine]:
        """The last ``tail`` lines of the instance's output."""
        params = {"tail": str(min(tail, MAX_TAIL)), "format": "ndjson"}
        with map_http_errors(self._peer):
            async with self._http.stream(
                "GET", f"/instances/{instance_id}/logs", params=params
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for_status(response)
                return [line async for line in self._lines(response)]

    @asynccontextmanager
    async def follow_logs(
        self, instance_id: uuid.UUID, *, tail: int
    ) -> AsyncIterator[AsyncIterator[AgentLogLine]]:
        """The last ``tail`` lines, then each new one until the workload exits. A stream
        silent for ``quiet_timeout`` seconds just ends (the caller reopens it)."""
        timeout = httpx.Timeout(self._quiet_timeout, connect=self._connect_timeout)
        params = {"tail": str(min(tail, MAX_TAIL)), "follow": "true", "format": "ndjson"}
        with map_http_errors(self._peer):
            async with self._http.stream(
                "GET", f"/instances/{instance_id}/logs", params=params, timeout=timeout
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for_status(response)
                yield self._lines(response, quiet_ends=True)

    async def _lines(
        self, response: httpx.Response, *, quiet_ends: bool = False
    ) -> AsyncIterator[AgentLogLine]:
        records = response.headers.get("content-type", "").startswith(NDJSON)
        limit = MAX_RECORD_BYTES if records else self._max_line

        def line_of(data: bytes) -> AgentLogLine:
            if records:
                return parse_log_record(data)
            return AgentLogLine(text=data.decode(errors="replace"))

        pending = b""
        try:
            async for chunk in response.aiter_bytes():
                lines, pending = split_lines(pending, chunk, max_bytes=limit)
                for line in lines:
                    if line or not records:
                        yield line_of(line)
        except httpx.ReadTimeout:
            if not quiet_ends:
                raise
        if pending:
            yield line_of(pending)


def _key(url: str, token: str) -> tuple[str, str]:
    return url.rstrip("/"), hashlib.sha256(token.encode()).hexdigest()


class AgentClients:
    """One ``AgentClient`` per agent address and credential, reused across requests; a node
    that registers with a new address or credential gets a new client (the old one closes)."""

    def __init__(self, *, connect_timeout: float = 3.0, quiet_timeout: float = 60.0) -> None:
        self._connect_timeout = connect_timeout
        self._quiet_timeout = quiet_timeout
        self._clients: dict[uuid.UUID, tuple[tuple[str, str], AgentClient]] = {}

    async def get(self, node_id: uuid.UUID, *, url: str, token: str) -> AgentClient:
        key = _key(url, token)
        held = self._clients.get(node_id)
        if held is not None and held[0] == key:
            return held[1]
        client = AgentClient(
            base_url=url,
            token=token,
            connect_timeout=self._connect_timeout,
            quiet_timeout=self._quiet_timeout,
        )
        self._clients[node_id] = (key, client)
        if held is not None:
            await held[1].aclose()
        return client

    async def aclose(self) -> None:
        clients = [client for _key, client in self._clients.values()]
        self._clients.clear()
        for client in clients:
            await client.aclose()
