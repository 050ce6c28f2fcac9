"""An instance's output through a real agent process and real runc containers: every line
carries the time it was written (not when it is read) and its stream, stdout and stderr
apart; a very long line and an unfinished one come in pieces flagged ``partial``; the
capture's rotation at a small cap loses no line of a followed stream; the plain text
format still answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.images import BuiltImage, script_image
from tests.integration.agent.harness import AgentHost, instance_body, preload

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]

TALK = (
    "httpd -p 8080 -h /www; echo early; echo oops >&2; sleep 2; echo late; "
    "head -c 40000 /dev/zero | tr '\\0' x; echo; printf unfinished; sleep 1000"
)
CHATTY = (
    "httpd -p 8080 -h /www; i=0; while true; do "
    'echo "out $i ................................................................"; '
    'echo "err $i" >&2; i=$((i+1)); usleep 2000; done'
)


def _image(tmp_path_factory: pytest.TempPathFactory, name: str, script: str) -> BuiltImage:
    return script_image(tmp_path_factory.mktemp(name) / f"{name}.tar", script)


@pytest.fixture(scope="module")
def talk_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return _image(tmp_path_factory, "talk", TALK)


@pytest.fixture(scope="module")
def chatty_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return _image(tmp_path_factory, "chatty", CHATTY)


async def _run(client: httpx.AsyncClient, image: BuiltImage) -> str:
    body = instance_body(image)
    r = await client.post("/instances", json=body)
    assert r.status_code == 201, r.text
    instance_id = str(r.json()["id"])
    async with asyncio.timeout(60):
        while (await client.get(f"/instances/{instance_id}")).json()["state"] != "running":
            await asyncio.sleep(0.05)
    return instance_id


async def _records(client: httpx.AsyncClient, instance_id: str, **params: Any) -> list[Any]:
    r = await client.get(
        f"/instances/{instance_id}/logs", params={"format": "ndjson", "tail": 1000, **params}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


async def test_lines_carry_their_write_time_and_stream(
    agent_host: Callable[..., AgentHost], talk_image: BuiltImage
) -> None:
    host = agent_host()
    await preload(host.data_dir, talk_image)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        instance_id = await _run(client, talk_image)
        async with asyncio.timeout(30):  # until the unfinished line has been written
            while not any(r["line"] == "unfinished" for r in await _records(client, instance_id)):
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # read well after writing: the times must not move
        read_at = time.time()
        records = await _records(client, instance_id)
        by_text = {r["line"]: r for r in records}
        early, oops, late = by_text["early"], by_text["oops"], by_text["late"]
        assert early["stream"] == "stdout" and late["stream"] == "stdout"
        assert oops["stream"] == "stderr"
        assert all(r["ts"].endswith("Z") and len(r["ts"]) == 30 for r in records)
        assert 1.9 <= _ts(late) - _ts(early) < 10  # the script's sleep 2 between them
        assert read_at - _ts(early) >= 3.9  # written >= 2 s + 2 s before this read
        assert read_at - _ts(by_text["unfinished"]) >= 1.9
        # 40,000 bytes in one line: pieces of 16 KiB flagged partial, the last one not
        pieces = [r for r in records if r["line"] and set(r["line"]) == {"x"}]
        assert [(len(r["line"]), r["partial"]) for r in pieces] == [
            (16384, True),
            (16384, True),
            (40000 - 2 * 16384, False),
        ]
        # one line: its pieces are read together (a pipe read can split it: within 0.5 s)
        assert _ts(pieces[-1]) - _ts(pieces[0]) < 0.5
        assert by_text["unfinished"]["partial"] is True  # held 0.5 s, then written as is
        assert early["partial"] is False
        assert [r["line"] for r in records].index("late") < [r["line"] for r in records].index(
            "unfinished"
        )
        # the plain text format: the lines only, both streams
        text = await client.get(f"/instances/{instance_id}/logs", params={"tail": 1000})
        assert text.headers["content-type"].startswith("text/plain")
        lines = text.text.splitlines()
        assert lines[:3] == ["early", "oops", "late"] or set(lines[:2]) == {"early", "oops"}
        assert "unfinished" in lines


async def test_rotation_at_a_small_cap_loses_no_followed_line(
    agent_host: Callable[..., AgentHost], chatty_image: BuiltImage
) -> None:
    host = agent_host(extra_env={"ZEITWORK_INSTANCE_LOG_MAX_BYTES": "65536"})
    await preload(host.data_dir, chatty_image)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        instance_id = await _run(client, chatty_image)
        out: list[int] = []
        err: list[int] = []
        params = {"format": "ndjson", "tail": 0, "follow": "true"}
        timeout = httpx.Timeout(60, connect=10)
        async with (
            asyncio.timeout(120),
            client.stream(
                "GET", f"/instances/{instance_id}/logs", params=params, timeout=timeout
            ) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                record = json.loads(line)
                words = record["line"].split()
                (out if record["stream"] == "stdout" else err).append(int(words[1]))
                assert words[0] == ("out" if record["stream"] == "stdout" else "err")
                if len(out) >= 3000:  # ~450 KiB of records: several rotations of the file
                    break
        assert out == list(range(out[0], out[0] + len(out)))  # none lost, none twice
        assert err == list(range(err[0], err[0] + len(err)))
        directory = host.data_dir / "agent" / "oci" / f"zw-{instance_id.replace('-', '')}"
        files = sorted(directory.glob("console.log*"))
        assert [f.name for f in files] == ["console.log", "console.log.1", "console.log.2"]
        assert all(f.stat().st_size <= 65536 + 64 * 1024 for f in files)
        # the history reads across the rotated files
        tail = await _records(client, instance_id, tail=2000)
        assert len(tail) == 2000
        numbers = [int(r["line"].split()[1]) for r in tail if r["stream"] == "stdout"]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
