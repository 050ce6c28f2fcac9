"""``GET /api/v1/projects/{project}/logs`` on a real PostgreSQL and a real operator: bad
input, node registration keeping the agent's address and credential, and (as root) the
fan-in from a real node agent running runc containers: lines of several instances labelled
and in order per instance, history and follow, a new instance joining a followed stream, a
restarted instance followed again, an unreachable node said inline, and no upstream stream
left open once the client goes; lines timed when they were written and labelled by stream,
merged by those times (history and follow), ``since`` and ``until`` cutting within an
instance's lines."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import BuiltImage, script_image
from tests.integration.agent.harness import TOKEN, AgentHost, agent_hosts, instance_body, preload
from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import PROBLEM
from tests.integration.operator.live_server import live_operator
from zeitwork.operator.principal import Scope

AGENT_TOKEN = "a" * 43  # the shape NodeRegistration.agent_token allows


async def _app(op: Operator, slug: str = "shop") -> tuple[uuid.UUID, uuid.UUID]:
    rows = await op.sql(
        "WITH p AS (INSERT INTO projects (name, slug) VALUES (%s, %s) RETURNING id) "
        "INSERT INTO project_environments (project_id, name) "
        "SELECT id, 'production' FROM p RETURNING project_id, id",
        (slug, slug),
    )
    return rows[0][0], rows[0][1]


async def _release(op: Operator, project: uuid.UUID, env: uuid.UUID, version: int) -> uuid.UUID:
    digest = "sha256:" + uuid.uuid4().hex * 2
    rows = await op.sql(
        "WITH i AS (INSERT INTO images (name, status, digest, size) "
        "VALUES ('app', 'ready', %s, 1) RETURNING id) "
        "INSERT INTO releases (project_id, project_environment_id, version, image_id, port, "
        "vcpu_millis, memory_mib, replicas, state) "
        "SELECT %s, %s, %s, id, 8080, 250, 64, 1, 'active' FROM i RETURNING id",
        (digest, project, env, version),
    )
    return rows[0][0]


async def _node(op: Operator, hostname: str, url: str | None, token: str | None) -> uuid.UUID:
    rows = await op.sql(
        "INSERT INTO nodes (hostname, ip_address, vcpu_millis, memory_mib, state, agent_url, "
        "agent_token) VALUES (%s, '127.0.0.1', 4000, 8192, 'ready', %s, %s) RETURNING id",
        (hostname, url, token),
    )
    return rows[0][0]


async def _instance(
    op: Operator, instance_id: uuid.UUID, node: uuid.UUID, release: uuid.UUID
) -> None:
    await op.sql(
        "INSERT INTO instances (id, node_id, image_id, release_id, state, vcpu_millis, "
        "memory_mib, default_port) SELECT %s, %s, image_id, id, 'running', 250, 64, 8080 "
        "FROM releases WHERE id = %s",
        (instance_id, node, release),
    )


# -- without root ----------------------------------------------------------------------------


async def test_registration_keeps_the_agent_address_and_never_shows_its_token(
    operator: Operator,
) -> None:
    join = await operator.token(Scope.JOIN)
    body = {
        "hostname": "n1",
        "ip_address": "10.0.0.5",
        "resources": {"vcpu": 2, "memory": 2048},
        "agent_url": "http://10.0.0.5:8081/",
        "agent_token": AGENT_TOKEN,
    }
    r = await operator.client.post("/api/v1/nodes", json=body, headers=operator.headers(join))
    assert r.status_code == 201, r.text
    assert AGENT_TOKEN not in r.text
    node_id = r.json()["node_id"]
    rows = await operator.sql("SELECT agent_url, agent_token FROM nodes WHERE id = %s", (node_id,))
    assert rows == [("http://10.0.0.5:8081", AGENT_TOKEN)]
    listed = await operator.client.get("/api/v1/nodes", headers=operator.headers())
    one = await operator.client.get(f"/api/v1/nodes/{node_id}", headers=operator.headers())
    assert AGENT_TOKEN not in listed.text and AGENT_TOKEN not in one.text
    # registering again with a new credential replaces it
    again = {**body, "id": node_id, "agent_token": "b" * 43}
    r = await operator.client.post("/api/v1/nodes", json=again, headers=operator.headers())
    assert r.status_code == 200, r.text
    rows = await operator.sql("SELECT agent_token FROM nodes WHERE id = %s", (node_id,))
    assert rows == [("b" * 43,)]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/projects/nope/logs", {}, 404),
        (f"/api/v1/projects/{uuid.uuid4()}/logs", {}, 404),
        ("/api/v1/projects/shop/logs", {"environment": "staging"}, 404),
        ("/api/v1/projects/shop/logs", {"release": "v7"}, 404),
        ("/api/v1/projects/shop/logs", {"instance": str(uuid.uuid4())}, 404),
        ("/api/v1/projects/shop/logs", {"release": "seven"}, 422),
        ("/api/v1/projects/shop/logs", {"since": "yesterday"}, 422),
        ("/api/v1/projects/shop/logs", {"format": "xml"}, 422),
        ("/api/v1/projects/shop/logs", {"tail": "-1"}, 422),
    ],
)
async def test_bad_requests_are_clear_problems(
    operator: Operator, path: str, params: dict[str, str], status: int
) -> None:
    await _app(operator)
    r = await operator.client.get(path, params=params, headers=operator.headers())
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_an_app_without_instances_has_no_lines(operator: Operator) -> None:
    await _app(operator)
    r = await operator.client.get("/api/v1/projects/shop/logs", headers=operator.headers())
    assert r.status_code == 200 and r.text == ""
    assert r.headers["content-type"].startswith("application/x-ndjson")


async def test_a_node_without_an_agent_address_is_said_not_skipped(operator: Operator) -> None:
    project, env = await _app(operator)
    release = await _release(operator, project, env, 1)
    node = await _node(operator, "old-agent", None, None)
    await _instance(operator, uuid.uuid4(), node, release)
    r = await operator.client.get("/api/v1/projects/shop/logs", headers=operator.headers())
    assert [json.loads(x) for x in r.text.splitlines()] == [
        {"notice": "node old-agent: the node's agent registered no API address"}
    ]


async def test_an_app_made_before_environments_shows_its_deployments_instances(
    operator: Operator,
) -> None:
    rows = await operator.sql(
        "WITH p AS (INSERT INTO projects (name, slug) VALUES ('old', 'old') RETURNING id), "
        "i AS (INSERT INTO images (name, status, digest, size) "
        "VALUES ('app', 'ready', %s, 1) RETURNING id) "
        "INSERT INTO deployments (project_id, image_id, state) "
        "SELECT p.id, i.id, 'active' FROM p, i RETURNING id, image_id",
        ("sha256:" + "c" * 64,),
    )
    deployment, image = rows[0]
    node = await _node(operator, "old-agent", None, None)
    await operator.sql(
        "INSERT INTO instances (node_id, image_id, deployment_id, state, vcpu_millis, "
        "memory_mib, default_port) VALUES (%s, %s, %s, 'running', 250, 64, 8080)",
        (node, image, deployment),
    )
    r = await operator.client.get("/api/v1/projects/old/logs", headers=operator.headers())
    assert r.status_code == 200, r.text
    assert "old-agent" in r.text
    named = await operator.client.get(
        "/api/v1/projects/old/logs",
        params={"environment": "production"},
        headers=operator.headers(),
    )
    assert named.status_code == 404  # asked by name: it does not exist


# -- with a real agent and runc ----------------------------------------------------------------


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Callable[..., AgentHost]]:
    async with agent_hosts(tmp_path, "host") as make:
        yield make


@pytest.fixture
def _subreaper() -> Iterator[None]:
    from tests.contract.runtime.harness import stop_being_subreaper

    yield
    stop_being_subreaper()


CHATTY = (
    "httpd -p 8080 -h /www; r=$RANDOM; i=0; "
    'while true; do echo "$NAME $r $i"; i=$((i+1)); sleep 0.05; done'
)


@pytest.fixture(scope="module")
def chatty_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """Serves :8080 (busybox httpd in the background) and writes ``NAME RUN N`` 20 times a
    second (RUN: random per start, N: 0, 1, 2, ...)."""
    return script_image(tmp_path_factory.mktemp("chatty") / "chatty.tar", CHATTY)


async def _start(client: httpx.AsyncClient, image: BuiltImage, name: str) -> uuid.UUID:
    body = instance_body(image, environment_variables={"NAME": name})
    body["image"]["digest"] = image.digest
    r = await client.post("/instances", json=body)
    assert r.status_code == 201, r.text
    instance_id = r.json()["id"]
    deadline = asyncio.get_running_loop().time() + 30
    while (await client.get(f"/instances/{instance_id}")).json()["state"] != "running":
        assert asyncio.get_running_loop().time() < deadline, "instance not running"
        await asyncio.sleep(0.05)
    return uuid.UUID(instance_id)


class Lines:
    """Log records of a followed stream, checked as they come."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.notices: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        if "notice" in record:
            self.notices.append(record["notice"])
        else:
            self.lines.append(record)

    def of(self, name: str) -> list[tuple[str, int]]:
        """(run, n) of the lines an instance called ``name`` wrote."""
        out = []
        for record in self.lines:
            words = record["line"].split()
            if len(words) == 3 and words[0] == name:
                out.append((words[1], int(words[2])))
        return out


def assert_in_order_without_gaps(runs: list[tuple[str, int]]) -> None:
    """Per run (one start of the workload), n grows by exactly one: none lost, none twice."""
    by_run: dict[str, list[int]] = {}
    for run, n in runs:
        by_run.setdefault(run, []).append(n)
    for run, numbers in by_run.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (run, numbers)


async def _follow_until(
    lines: AsyncIterator[str],
    seen: Lines,
    done: Callable[[], bool],
    *,
    what: str,
    timeout: float = 30,
) -> None:
    began = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(timeout):
            async for line in lines:
                if line.startswith("data: "):
                    seen.add(json.loads(line[6:]))
                    if done():
                        took = asyncio.get_running_loop().time() - began
                        print(f"follow step {what!r}: {took:.2f} s")
                        return
    except TimeoutError:
        counts = {name: len(seen.of(name)) for name in ("a", "b", "c")}
        runs = {name: sorted({run for run, _ in seen.of(name)}) for name in ("a", "b", "c")}
        raise AssertionError(
            f"{what}: not within {timeout:g} s; lines {counts}, runs {runs}, notices {seen.notices}"
        ) from None


@pytest.mark.requires_root
@pytest.mark.slow
@pytest.mark.usefixtures("_subreaper")
async def test_fan_in_from_a_real_agent(
    operator: Operator, agent: Callable[..., AgentHost], chatty_image: BuiltImage
) -> None:
    host = agent()
    await preload(host.data_dir, chatty_image)
    host.start()
    await host.wait_ready()
    project, env = await _app(operator)
    v1 = await _release(operator, project, env, 1)
    node = await _node(operator, "real-node", host.api_url(), TOKEN)
    dead = await _node(operator, "dead-node", "http://127.0.0.1:9", AGENT_TOKEN)
    async with host.client() as agent_api:
        a = await _start(agent_api, chatty_image, "a")
        b = await _start(agent_api, chatty_image, "b")
        await _instance(operator, a, node, v1)
        await _instance(operator, b, node, v1)
        await _instance(operator, uuid.uuid4(), dead, v1)

        # history: both instances' last lines, labelled, and the dead node said inline
        # (polled until each new instance has written its first 5 lines)
        async with asyncio.timeout(30):
            while True:
                r = await operator.client.get(
                    "/api/v1/projects/shop/logs", params={"tail": 5}, headers=operator.headers()
                )
                assert r.status_code == 200, r.text
                history = Lines()
                for text in r.text.splitlines():
                    history.add(json.loads(text))
                if len(history.of("a")) >= 5 and len(history.of("b")) >= 5:
                    break
                await asyncio.sleep(0.2)
        assert history.notices == ["node dead-node: unreachable"]
        assert len(history.of("a")) == 5 and len(history.of("b")) == 5
        assert_in_order_without_gaps(history.of("a"))
        first = history.lines[0]
        assert set(first) == {
            "ts",
            "instance_id",
            "node_id",
            "release",
            "stream",
            "line",
            "partial",
        }
        assert first["node_id"] == str(node) and first["release"] == "v1"
        assert first["stream"] == "stdout" and first["ts"].endswith("Z")
        assert {x["instance_id"] for x in history.lines} == {str(a), str(b)}

        async with live_operator(operator) as url, httpx.AsyncClient(base_url=url) as client:
            params = {"follow": "true", "format": "sse", "tail": "3"}
            seen = Lines()
            async with client.stream(
                "GET", "/api/v1/projects/shop/logs", params=params, headers=operator.headers()
            ) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                await _follow_until(
                    lines,
                    seen,
                    lambda: len(seen.of("a")) > 20 and len(seen.of("b")) > 20 and seen.notices,
                    what="the first lines of a and b and the dead node's notice",
                )
                assert seen.notices == ["node dead-node: unreachable, retrying"]

                # a rollout's new instance joins the stream from its first line
                v2 = await _release(operator, project, env, 2)
                c = await _start(agent_api, chatty_image, "c")
                await _instance(operator, c, node, v2)
                await _follow_until(
                    lines, seen, lambda: len(seen.of("c")) > 10, what="the new instance c"
                )
                assert seen.of("c")[0][1] == 0
                assert {x["release"] for x in seen.lines if x["instance_id"] == str(c)} == {"v2"}

                # a restart: the new run is followed too
                runs_before = {run for run, _ in seen.of("a")}
                stop = await agent_api.put(f"/instances/{a}/state", json={"state": "stopped"})
                assert stop.status_code == 200, stop.text
                # stopped first: a "running" sent before the agent acted on "stopped" leaves
                # the instance running, and no new run would ever come (the CI failure of
                # stop 21 under load: 30 s waiting for a restart that was not asked for)
                async with asyncio.timeout(60):
                    while (await agent_api.get(f"/instances/{a}")).json()["state"] != "stopped":
                        await asyncio.sleep(0.05)
                start = await agent_api.put(f"/instances/{a}/state", json={"state": "running"})
                assert start.status_code == 200, start.text
                await _follow_until(
                    lines,
                    seen,
                    lambda: (
                        len({run for run, _ in seen.of("a")} - runs_before) == 1
                        and len(seen.of("a")) > 60
                    ),
                    what="the restarted run of a",
                    timeout=60,  # a container start on a loaded machine, then its lines
                )
            for name in ("a", "b", "c"):
                assert_in_order_without_gaps(seen.of(name))

            # the client went: every stream to the agent is closed
            deadline = asyncio.get_running_loop().time() + 10
            while _busy_agent_connections(operator) > 0:
                assert asyncio.get_running_loop().time() < deadline, "agent streams left open"
                await asyncio.sleep(0.05)
    await operator.deps.agent_clients.aclose()


def _busy_agent_connections(op: Operator) -> int:
    """Connections the operator's agent clients hold that are not idle (httpcore's pool)."""
    busy = 0
    for _key, client in op.deps.agent_clients._clients.values():
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        busy += sum(1 for conn in pool.connections if not conn.is_idle())
    return busy


TWO_STREAMS = (
    'httpd -p 8080 -h /www; echo "$NAME begin"; sleep 2; i=0; '
    'while true; do echo "$NAME out $i"; echo "$NAME err $i" >&2; i=$((i+1)); sleep 0.1; done'
)


@pytest.fixture(scope="module")
def two_streams_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """``NAME begin``, 2 s of silence, then ``NAME out N`` on stdout and ``NAME err N`` on
    stderr ten times a second."""
    return script_image(tmp_path_factory.mktemp("two-streams") / "two.tar", TWO_STREAMS)


def _words(record: dict[str, Any]) -> list[str]:
    return str(record["line"]).split()


@pytest.mark.requires_root
@pytest.mark.slow
@pytest.mark.usefixtures("_subreaper")
async def test_lines_are_timed_when_written_labelled_by_stream_and_cut_by_since(
    operator: Operator, agent: Callable[..., AgentHost], two_streams_image: BuiltImage
) -> None:
    host = agent()
    await preload(host.data_dir, two_streams_image)
    host.start()
    await host.wait_ready()
    project, env = await _app(operator, "times")
    v1 = await _release(operator, project, env, 1)
    node = await _node(operator, "times-node", host.api_url(), TOKEN)
    url = "/api/v1/projects/times/logs"
    async with host.client() as agent_api:
        a = await _start(agent_api, two_streams_image, "a")
        b = await _start(agent_api, two_streams_image, "b")
        await _instance(operator, a, node, v1)
        await _instance(operator, b, node, v1)

        async def history(**params: str) -> list[dict[str, Any]]:
            r = await operator.client.get(url, params=params, headers=operator.headers())
            assert r.status_code == 200, r.text
            return [json.loads(text) for text in r.text.splitlines()]

        async with asyncio.timeout(60):  # both have written 20 lines a stream after "begin"
            while True:
                lines = await history(tail="1000")
                if all(sum(_words(x)[:2] == [n, "err"] for x in lines) >= 20 for n in ("a", "b")):
                    break
                await asyncio.sleep(0.3)
        ts = [datetime.fromisoformat(x["ts"]) for x in lines]
        # merged by write time across the two instances, and interleaved (not a, then b)
        assert ts == sorted(ts)
        names = [_words(x)[0] for x in lines]
        assert sum(1 for p, q in itertools.pairwise(names) if p != q) >= 10
        # each line's stream, and its time from when it was written (2 s silence kept)
        for record in lines:
            assert record["stream"] == ("stderr" if _words(record)[1] == "err" else "stdout")
        of_a = {" ".join(_words(x)[1:]): x for x in lines if _words(x)[0] == "a"}
        begin = datetime.fromisoformat(of_a["begin"]["ts"])
        first_out = datetime.fromisoformat(of_a["out 0"]["ts"])
        assert (first_out - begin).total_seconds() >= 1.9
        assert (datetime.now(UTC) - begin).total_seconds() >= 3.9  # read >= 2 s after

        # since cuts within an instance's lines: from a's "out 5" on, nothing earlier
        cut = of_a["out 5"]["ts"]
        after = await history(tail="1000", since=cut)
        a_after = [" ".join(_words(x)[1:]) for x in after if _words(x)[0] == "a"]
        assert a_after[0] in ("out 5", "err 5") and "begin" not in a_after
        assert "out 4" not in a_after and "err 4" not in a_after
        assert all(x["ts"] >= cut for x in after)
        # until the same time: the lines before it only (and "out 5" itself)
        before = await history(tail="1000", until=cut)
        a_before = [" ".join(_words(x)[1:]) for x in before if _words(x)[0] == "a"]
        assert a_before[0] == "begin" and "out 5" in a_before[-2:]  # err 5: same read
        assert all(x["ts"] <= cut for x in before)
        refused = await operator.client.get(
            url, params={"until": cut, "follow": "true"}, headers=operator.headers()
        )
        assert refused.status_code == 422 and "until" in refused.text

        # followed: both instances' lines merged by write time (the reorder window)
        async with live_operator(operator) as live, httpx.AsyncClient(base_url=live) as client:
            params = {"follow": "true", "format": "sse", "tail": "0"}
            seen = Lines()
            async with client.stream(
                "GET", url, params=params, headers=operator.headers()
            ) as response:
                assert response.status_code == 200
                stream = response.aiter_lines()
                await _follow_until(stream, seen, lambda: len(seen.lines) >= 80, what="80 lines")
        followed = [datetime.fromisoformat(x["ts"]) for x in seen.lines]
        late = sum(1 for p, q in itertools.pairwise(followed) if q < p)
        assert late <= 2, late  # out of time order only when one came later than 0.2 s
        for name in ("a", "b"):
            numbers = [int(_words(x)[2]) for x in seen.lines if _words(x)[:2] == [name, "out"]]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    await operator.deps.agent_clients.aclose()
