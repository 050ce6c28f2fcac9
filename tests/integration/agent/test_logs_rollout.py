"""An app's logs and events through a real operator process and a real node agent running
runc containers: a followed ``logs`` stream across a rolling release carries the lines of
the old and the new instances, none lost and in order per instance, each new instance's
from its first line; a release whose process crashes shows its exit code and its last
lines in the events (in the rollout's failure: a crash-looping instance stays ``starting``
under the agent's back-off, so no ``instance.exited`` event is made for each crash)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import BuiltImage, script_image
from tests.integration.agent.harness import AgentHost
from tests.integration.agent.operator_process import OperatorProcess, import_image, wait_json

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]

HEALTH = {"type": "tcp", "interval": 0.2, "timeout": 1, "grace_period": 0}
STRATEGY = {
    "type": "rolling",
    "min_healthy_time": 0.5,
    "drain_timeout": 0.5,
    "stop_timeout": 1,
    "healthy_deadline": 12,
    "progress_deadline": 60,
}
CHATTY = (
    "httpd -p 8080 -h /www; r=$RANDOM$RANDOM; i=0; "
    'while true; do echo "$VERSION $r $i"; i=$((i+1)); sleep 0.05; done'
)
CRASH = "echo starting up; echo 'fatal: bad config key \"port\"' >&2; sleep 0.5; exit 3"


def _image(tmp_path_factory: pytest.TempPathFactory, name: str, script: str) -> BuiltImage:
    return script_image(tmp_path_factory.mktemp(name) / f"{name}.tar", script)


@pytest.fixture(scope="module")
def chatty_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return _image(tmp_path_factory, "chatty", CHATTY)


@pytest.fixture(scope="module")
def crash_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return _image(tmp_path_factory, "crash", CRASH)


@pytest.fixture
def operator_process(migrated_database: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    made = OperatorProcess(database_url=migrated_database, root=tmp_path / "operator")
    try:
        yield made
    finally:
        made.stop()


async def _platform(operator: OperatorProcess, agent_host: Callable[..., AgentHost]) -> None:
    operator.start()
    await operator.wait_ready()
    join = await operator.join_token()
    host = agent_host(
        extra_env={
            "OPERATOR_URL": operator.url(),
            "ZEITWORK_JOIN_TOKEN": join,
            "ZEITWORK_HEARTBEAT_INTERVAL": "1",
        }
    )
    host.start()
    await host.wait_ready()
    async with operator.client() as api:
        ready = await wait_json(
            api, "/api/v1/nodes", lambda body: any(n["state"] == "ready" for n in body), 60
        )
    assert ready


async def _deploy(api: httpx.AsyncClient, app: str, image_id: str, **body: Any) -> int:
    payload = {
        "image": image_id,
        "port": 8080,
        "resources": {"vcpu": 0.25, "memory": 64},
        "health_check": HEALTH,
        "strategy": STRATEGY,
        **body,
    }
    response = await api.post(f"/api/v1/projects/{app}/releases", json=payload)
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


async def _settled(api: httpx.AsyncClient, app: str, version: int) -> str:
    body = await wait_json(
        api,
        f"/api/v1/projects/{app}/releases/{version}",
        lambda r: r.get("state") in ("active", "failed", "superseded"),
        120,
    )
    return str(body["state"])


async def _app(api: httpx.AsyncClient) -> str:
    app = f"logs-{uuid.uuid4().hex[:6]}"
    created = await api.post("/api/v1/projects", json={"name": app, "slug": app})
    assert created.status_code == 201, created.text
    return app


async def test_logs_follow_a_rolling_release_with_no_line_lost(
    operator_process: OperatorProcess,
    agent_host: Callable[..., AgentHost],
    chatty_image: BuiltImage,
) -> None:
    await _platform(operator_process, agent_host)
    async with operator_process.client() as api:
        image_id = await import_image(operator_process, chatty_image.path, "chatty")
        app = await _app(api)
        env = {"VERSION": "one"}
        v1 = await _deploy(api, app, image_id, replicas=2, env=env)
        assert await _settled(api, app, v1) == "active"

        runs: dict[str, list[int]] = {}  # "instance run" -> the numbers seen, in order
        labels: dict[str, tuple[str, str]] = {}  # run -> (VERSION, release)
        params = {"follow": "true", "tail": "0", "format": "ndjson"}
        timeout = httpx.Timeout(30, connect=10)

        def take(record: dict[str, Any]) -> None:
            words = str(record.get("line", "")).split()
            if len(words) != 3:
                return
            key = f"{record['instance_id']} {words[1]}"
            runs.setdefault(key, []).append(int(words[2]))
            labels[key] = (words[0], record["release"])

        async with api.stream(
            "GET", f"/api/v1/projects/{app}/logs", params=params, timeout=timeout
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()

            async def read_until(done: Callable[[], bool], seconds: float) -> None:
                async with asyncio.timeout(seconds):
                    async for text in lines:
                        if text.strip():
                            take(json.loads(text))
                        if done():
                            return

            def of(version: str) -> list[str]:
                return [k for k, (v, _) in labels.items() if v == version]

            await read_until(lambda: len(of("one")) == 2, 30)
            v2 = await _deploy(api, app, image_id, replicas=2, env={"VERSION": "two"})
            rollout = asyncio.create_task(_settled(api, app, v2))
            await read_until(rollout.done, 120)
            assert rollout.result() == "active"
            await read_until(lambda: all(len(runs[k]) >= 40 for k in of("two")), 30)

        assert len(of("one")) == 2 and len(of("two")) == 2
        for key, numbers in runs.items():  # none lost, none twice, in order per instance
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), key
        for key in of("two"):  # the rollout's new instances from their first line
            assert runs[key][0] == 0, key
            assert labels[key][1] == f"v{v2}"
        assert {labels[k][1] for k in of("one")} == {f"v{v1}"}
        # the old ones were read until they were stopped: several seconds of lines each
        assert all(len(runs[k]) >= 20 for k in of("one"))


async def test_a_crash_shows_its_exit_code_and_last_lines_in_the_events(
    operator_process: OperatorProcess,
    agent_host: Callable[..., AgentHost],
    crash_image: BuiltImage,
) -> None:
    await _platform(operator_process, agent_host)
    async with operator_process.client() as api:
        image_id = await import_image(operator_process, crash_image.path, "crash")
        app = await _app(api)
        version = await _deploy(api, app, image_id, replicas=1)
        assert await _settled(api, app, version) == "failed"
        events = await wait_json(
            api,
            f"/api/v1/events?project={app}&limit=500",
            lambda body: any(e["kind"] == "rollout.failed" for e in body),
            30,
        )
        failed = next(e for e in events if e["kind"] == "rollout.failed")
        assert failed["level"] == "error"
        cause = failed["message"]
        assert "exited with code 3" in cause, cause
        # its last lines, stdout and stderr, in the order written
        last = cause.split("last log lines:\n", 1)[1].splitlines()
        assert last[-2:] == ["starting up", 'fatal: bad config key "port"'], cause
        assert cause.endswith(failed["data"]["cause"])
        # the instance's own events name it and its node
        mine = [e for e in events if e["instance_id"] is not None]
        assert {e["kind"] for e in mine} >= {"instance.placed", "instance.starting"}
        assert all(e["node_id"] is not None for e in mine)
