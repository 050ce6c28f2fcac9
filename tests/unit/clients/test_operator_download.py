"""The agent's image download: a slow disk never stalls the agent's event loop."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from zeitwork.clients.operator import OperatorClient

DIGEST = "sha256:" + "ab" * 32
ARCHIVE = os.urandom(3 * 1024 * 1024 + 17)


async def _chunks() -> AsyncIterator[bytes]:
    for start in range(0, len(ARCHIVE), 256 * 1024):
        yield ARCHIVE[start : start + 256 * 1024]


def _serve(request: httpx.Request) -> httpx.Response:
    assert request.url.path.endswith("/archive")
    return httpx.Response(200, headers={"Digest": DIGEST}, content=_chunks())


async def test_download_writes_and_syncs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a busy disk flushing a big archive
        time.sleep(0.8)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    client = OperatorClient(base_url="http://operator", token="zw_node")
    # the transport seam of this test: the same client code over an in-memory operator
    client._http = httpx.AsyncClient(
        base_url="http://operator", transport=httpx.MockTransport(_serve)
    )
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker(last: float) -> None:  # stands in for the heartbeat loop, the API
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if done.is_set():
                return

    ticking = asyncio.create_task(ticker(time.monotonic()))
    await asyncio.sleep(0)
    try:
        dest = tmp_path / "image.tar"
        announced = await client.download_image(uuid.uuid4(), dest, expected_digest=DIGEST)
    finally:
        done.set()
        await ticking
        await client.aclose()
    assert announced == DIGEST
    assert dest.read_bytes() == ARCHIVE
    assert max(gaps) < 0.4, f"the event loop stalled for {max(gaps):.2f} s"
