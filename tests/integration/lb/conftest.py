from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lb.origin import Origin
from zeitwork.lb.main import LoadBalancer
from zeitwork.lb.settings import LBSettings

MakeOrigin = Callable[..., Awaitable[Origin]]
MakeLB = Callable[..., Awaitable[LoadBalancer]]


@pytest.fixture
async def make_origin() -> AsyncIterator[MakeOrigin]:
    started: list[Origin] = []

    async def make(name: str = "origin", port: int = 0) -> Origin:
        origin = await Origin(name).start(port)
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


def lb_settings(tmp_path: Path, **overrides: Any) -> LBSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "workers": 1,
        "backends": "",
        "operator_url": None,
        "token": None,
        "health_path": "/health",  # static backends: the origin's /health (explicit override)
        "health_interval": 0.2,
        "health_timeout": 0.2,
        "health_rise": 2,
        "health_fall": 2,
        "eject_failures": 3,
        "eject_seconds": 1.0,
        "drain_timeout": 5.0,
        "trusted_proxies": "",
        "algorithm": "round-robin",
        "data_dir": tmp_path,
        "watch_wait": 5.0,
        "full_refresh": 60.0,
        "max_body": 1024 * 1024 * 1024,
    }
    values.update(overrides)
    return LBSettings(**values)


@pytest.fixture
async def make_lb(tmp_path: Path) -> AsyncIterator[MakeLB]:
    running: list[tuple[LoadBalancer, asyncio.Event, asyncio.Task[None]]] = []

    async def make(**overrides: Any) -> LoadBalancer:
        lb = LoadBalancer(lb_settings(tmp_path, **overrides))
        await lb.start()
        stop = asyncio.Event()
        task = asyncio.create_task(lb.run(stop), name="lb-under-test")
        running.append((lb, stop, task))
        return lb

    yield make
    for _, stop, task in running:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Any], *, timeout: float = 5.0, step: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value or time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [
        (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
    ]
    response = RawResponse(status, headers, b"")
    if head_only or status in (101, 204, 304) or 100 <= status < 200:
        return response
    te = response.header("transfer-encoding")
    length = response.header("content-length")
    if te and te.lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        response.body = b"".join(parts)
    elif length is not None:
        response.body = await reader.readexactly(int(length))
    else:
        response.body = await reader.read()
    return response


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def http(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    host: str = "app.test",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One request on a fresh connection."""
    async with connection(port) as (reader, writer):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await asyncio.wait_for(read_response(reader, head_only=method == "HEAD"), 10)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            data += chunk
    return data


# -- the real command in a subprocess ------------------------------------------------------------


class LBProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0
        self.admin_port = 0

    def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            for line in text.splitlines():
                if '"lb.listening"' in line:
                    data = json.loads(line)
                    self.port = int(data["port"])
                    self.admin_port = int(data["admin_port"])
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"load balancer exited: {text}")
            time.sleep(0.05)
        raise AssertionError(f"load balancer did not start: {self.log.read_text()}")

    def rss_kib(self) -> int:
        total = 0
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                m = re.search(r"VmRSS:\s+(\d+) kB", status)
                if m:
                    total += int(m.group(1))
        return total

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


@pytest.fixture
def lb_process(tmp_path: Path) -> Iterator[Callable[..., LBProcess]]:
    started: list[LBProcess] = []

    def start(**env: str) -> LBProcess:
        log = tmp_path / f"lb-{len(started)}.log"
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LB_", "PORT", "OPERATOR_URL", "ZEITWORK_"))
        }
        full.update(
            {
                "ENVIRONMENT": "production",
                "PORT": "0",
                "HOST": "127.0.0.1",
                "LB_ADMIN_PORT": "0",
                "LB_WORKERS": "1",
                "ZEITWORK_DATA_DIR": str(tmp_path),
                "LB_HEALTH_INTERVAL": "0.5",
            }
        )
        full.update(env)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zeitwork", "load-balancer"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        lbp = LBProcess(proc, log)
        started.append(lbp)
        lbp.wait_listening()
        return lbp

    yield start
    for lbp in started:
        lbp.stop()
