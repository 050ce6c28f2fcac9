"""The operator app of an ``Operator`` fixture served by uvicorn on a real socket: streamed
responses (followed events and logs) need a real connection, which httpx's ASGI transport
does not give."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn

from tests.integration.operator.conftest import Operator
from zeitwork.observability import new_registry
from zeitwork.operator.app import create_app


@contextlib.asynccontextmanager
async def live_operator(op: Operator, *, port: int = 0) -> AsyncIterator[str]:
    """Serve ``op``'s deps on 127.0.0.1 (``port``, 0: any); yields the base URL once
    ``/health`` answers."""
    app = create_app(deps=op.deps, registry=new_registry())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as probe:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/health")).status_code == 200:
                        break
                assert asyncio.get_running_loop().time() < deadline, "operator did not start"
                await asyncio.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
