"""Request figures per app: a real load balancer pushes its per-route totals to the real
operator (over a socket, proxy token), real traffic goes through it, and the app's status
shows requests/s, the 5xx share and p50 / p99 from them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.integration.lb.conftest import (
    LBProcess,
    MakeLB,
    MakeOrigin,
    eventually,
    http,
    lb_settings,
)
from tests.integration.operator.conftest import Operator, operator, operator_factory
from tests.integration.operator.fleet import assert_problem
from tests.integration.operator.releases_kit import FAST, FakeAgent, Platform, bind, platform
from zeitwork.clients.proxy_stats import ProxyStatsClient
from zeitwork.lb.main import LoadBalancer
from zeitwork.lb.stats_push import StatsPusher, load_or_make_id
from zeitwork.operator.principal import Scope

__all__ = ["operator", "operator_factory"]  # fixtures reused from the operator's tests

HOST = "metrics.example.com"


@pytest.fixture
async def operator_url(operator: Operator) -> AsyncIterator[str]:
    """Serve the operator app over a real socket (port 0) with uvicorn."""
    app: Any = operator.client._transport.app  # type: ignore[attr-defined]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, timeout=10)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    sock.close()


@dataclass
class LocalAgent(FakeAgent):
    """A fake agent whose instances answer on a real origin (127.0.0.1:port)."""

    port: int = 0

    async def report(self, instance_id: str, body: dict[str, Any]) -> None:
        if "ip_address" in body:
            body = body | {"ip_address": "127.0.0.1", "port": self.port}
        await super().report(instance_id, body)


async def served_by(operator: Operator, port: int) -> Platform:
    """An app on one node, bound to ``HOST``, whose one instance is the origin on
    127.0.0.1:``port``; deployed and serving."""
    p = await platform(operator, nodes=1)
    agent = p.agents[0]
    p.agents[0] = LocalAgent(
        op=operator, node_id=agent.node_id, token=agent.token, number=0, port=port
    )
    await p.deploy(replicas=1, strategy=FAST)
    await bind(p, HOST)

    async def serving() -> bool:
        return [i["serving"] for i in (await p.status())["instances"]] == [True]

    await p.converge(serving)
    return p


async def test_status_shows_request_figures_from_real_traffic(
    operator: Operator, operator_url: str, make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    origin = await make_origin("shop")
    p = await served_by(operator, origin.port)
    assert (await p.status())["metrics"] is None  # no balancer has pushed yet

    token = await operator.token(Scope.PROXY)
    lb = await make_lb(
        operator_url=operator_url, token=token, stats_push_interval=0.3, lb_id="lb-test-a"
    )

    async def routed() -> bool:
        return (await http(lb.port, path="/", host=HOST)).status == 200

    await eventually(routed, timeout=10)
    # 1 + 44 fast answers, 5 errors (never two in a row: passive ejection), 5 slow answers
    statuses = []
    for i in range(54):
        path = "/status/500" if i % 11 == 5 else "/slow/0.3" if i % 11 == 8 else "/"
        statuses.append((await http(lb.port, path=path, host=HOST)).status)
    assert statuses.count(500) == 5 and statuses.count(200) == 49
    await http(lb.port, path="/", host="unknown.example.com")  # someone else's: not counted

    # the balancer's own totals for the host (the first probe may have met a 503 too)
    own = lb.stats_routes()["routes"][HOST]
    assert own["requests"] >= 55 and own["status"]["5xx"] >= 5, own

    async def pushed_all() -> bool:
        rows = await operator.sql(
            "SELECT (routes -> %s ->> 'requests')::int FROM proxy_stats ORDER BY at DESC LIMIT 1",
            (HOST,),
        )
        return rows == [(own["requests"],)]

    await eventually(pushed_all, timeout=15, step=0.1)
    metrics = (await p.status())["metrics"]
    assert metrics is not None
    assert metrics["window_s"] == 60 and metrics["load_balancers"] == 1
    share = own["status"]["5xx"] / own["requests"]
    assert metrics["error_rate"] == pytest.approx(share, abs=0.0001), metrics
    assert 0 < metrics["requests_per_s"] < 1000
    assert metrics["p50_ms"] < 25 < 250 <= metrics["p99_ms"] <= 500, metrics
    assert metrics["bytes_out_per_s"] > 0
    rows = await operator.sql("SELECT DISTINCT lb_id FROM proxy_stats")
    assert rows == [("lb-test-a",)]


async def test_push_endpoint_refuses_bad_input_and_other_scopes(
    operator: Operator,
) -> None:
    proxy = operator.headers(await operator.token(Scope.PROXY))
    good: dict[str, Any] = {
        "lb_id": "lb-1",
        "stats": {
            "started_at": 10.0,
            "at": 20.0,
            "workers": 1,
            "latency_bounds": [0.1, 1.0],
            "routes": {
                "a.example.com": {
                    "requests": 2,
                    "status": {"2xx": 2},
                    "bytes_in": 0,
                    "bytes_out": 10,
                    "latency": {"counts": [2, 0, 0], "count": 2, "sum": 0.1},
                }
            },
        },
    }
    r = await operator.client.post("/api/v1/proxies/stats", headers=proxy, json=good)
    assert r.status_code == 204, r.text
    assert (await operator.sql("SELECT lb_id, at FROM proxy_stats")) == [("lb-1", 20.0)]
    # the same snapshot again is ignored, not a second row
    r = await operator.client.post("/api/v1/proxies/stats", headers=proxy, json=good)
    assert r.status_code == 204
    assert len(await operator.sql("SELECT 1 FROM proxy_stats")) == 1

    bad_counts = {**good["stats"], "routes": {"a": {**good["stats"]["routes"]["a.example.com"]}}}
    bad_counts["routes"]["a"]["latency"] = {"counts": [1], "count": 1, "sum": 0.0}
    for body in (
        {**good, "lb_id": "Not An Id"},
        {**good, "stats": {**good["stats"], "latency_bounds": [1.0, 0.1]}},
        {**good, "stats": {**good["stats"], "at": 1.0}},
        {**good, "stats": bad_counts},
        {"lb_id": "lb-1"},
    ):
        r = await operator.client.post("/api/v1/proxies/stats", headers=proxy, json=body)
        assert_problem(r, 422)
    # not finite, past any clock, past any counter, a NUL in a host: 422 before PostgreSQL
    text = json.dumps(good)
    for bad in (
        text.replace('"at": 20.0', '"at": Infinity'),
        text.replace('"at": 20.0', '"at": 1e308'),
        text.replace("[0.1, 1.0]", "[0.1, NaN]"),
        text.replace('"requests": 2', '"requests": 1' + "0" * 40),
        text.replace('"a.example.com"', '"a\\u0000.example.com"'),
    ):
        assert bad != text
        r = await operator.client.post(
            "/api/v1/proxies/stats",
            headers=proxy | {"content-type": "application/json"},
            content=bad.encode(),
        )
        assert_problem(r, 422)
    join = operator.headers(await operator.token(Scope.JOIN))
    r = await operator.client.post("/api/v1/proxies/stats", headers=join, json=good)
    assert_problem(r, 403)
    r = await operator.client.post("/api/v1/proxies/stats", json=good)
    assert_problem(r, 401)


async def test_a_restarted_balancer_keeps_its_id_and_its_totals_count_again(
    operator: Operator, operator_url: str, make_origin: MakeOrigin, tmp_path: Path
) -> None:
    origin = await make_origin("shop")
    p = await served_by(operator, origin.port)
    settings = lb_settings(
        tmp_path,
        operator_url=operator_url,
        token=await operator.token(Scope.PROXY),
        stats_push_interval=0.3,
    )
    totals: list[int] = []
    ids: list[str | None] = []
    for burst in (12, 5):  # the second balancer starts from zero: its totals go down
        lb = LoadBalancer(settings)
        await lb.start()
        stop = asyncio.Event()
        task = asyncio.create_task(lb.run(stop))
        try:

            async def routed(lb: LoadBalancer = lb) -> bool:
                return (await http(lb.port, path="/", host=HOST)).status == 200

            await eventually(routed, timeout=10)
            for _ in range(burst - 1):
                assert (await http(lb.port, path="/", host=HOST)).status == 200
            own = lb.stats_routes()["routes"][HOST]["requests"]

            async def pushed(own: int = own) -> bool:
                rows = await operator.sql(
                    "SELECT (routes -> %s ->> 'requests')::int FROM proxy_stats "
                    "ORDER BY created_at DESC, at DESC LIMIT 1",
                    (HOST,),
                )
                return rows == [(own,)]

            await eventually(pushed, timeout=15, step=0.1)
            totals.append(own)
            ids.append(lb.pusher.lb_id if lb.pusher is not None else None)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert ids[0] is not None and ids == [ids[0], ids[0]]
    assert (tmp_path / "lb" / "id").read_text().strip() == ids[0]
    assert totals[1] < totals[0]

    metrics = (await p.status())["metrics"]
    rows = await operator.sql(
        "SELECT min(at), max(at), count(DISTINCT started_at) FROM proxy_stats"
    )
    (first, last, starts) = rows[0]
    assert starts == 2
    # both balancers' requests count: nothing lost or negative across the restart
    assert metrics is not None
    expected = sum(totals) / (last - first)
    assert metrics["requests_per_s"] == pytest.approx(expected, rel=0.01), (metrics, totals)


async def test_pushes_fail_while_the_operator_is_down_and_resume_when_it_is_up(
    operator: Operator, tmp_path: Path
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening yet: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = ProxyStatsClient(base_url=url, token=await operator.token(Scope.PROXY))
    events: list[tuple[str, dict[str, Any]]] = []

    class Log:  # records what the pusher logs
        def warning(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

        def info(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

    (tmp_path / "lb").mkdir()
    (tmp_path / "lb" / "id").write_text("Not An Id\n")  # unusable: a new one is made
    snapshot = {"started_at": 1.0, "at": 2.0, "latency_bounds": [0.1], "routes": {}}
    pusher = StatsPusher(
        sink=client,
        snapshot=lambda: snapshot | {"at": time.time()},
        interval=0.1,
        log=Log(),
        id_file=tmp_path / "lb" / "id",
    )
    lb_id = pusher.load_id()
    assert re.fullmatch(r"lb-[0-9a-f]{12}", lb_id)
    assert (tmp_path / "lb" / "id").read_text().strip() == lb_id
    try:
        assert not await pusher.push_once()
        assert not await pusher.push_once()
        assert "unreachable" in str(pusher.last_error)
        assert [e for e, _ in events] == ["lb.stats_push_failed"]  # once, not per attempt

        app: Any = operator.client._transport.app  # type: ignore[attr-defined]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await eventually(lambda: server.started, timeout=10)
            assert await pusher.push_once()
            assert pusher.last_error is None and pusher.pushed == 1
            assert [e for e, _ in events] == ["lb.stats_push_failed", "lb.stats_push_recovered"]
            assert await operator.sql("SELECT lb_id FROM proxy_stats") == [(lb_id,)]
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()
        sock.close()
    # the id stays across starts
    assert load_or_make_id(tmp_path / "lb" / "id") == lb_id


@pytest.mark.slow
async def test_a_multi_worker_balancer_pushes_once_with_every_workers_requests(
    operator: Operator,
    operator_url: str,
    make_origin: MakeOrigin,
    lb_process: Callable[..., LBProcess],
    tmp_path: Path,
) -> None:
    origin = await make_origin("shop")
    p = await served_by(operator, origin.port)
    lb = await asyncio.to_thread(
        lb_process,
        LB_WORKERS="2",
        OPERATOR_URL=operator_url,
        ZEITWORK_PROXY_TOKEN=await operator.token(Scope.PROXY),
        LB_STATS_PUSH_INTERVAL="0.5",
    )

    async def routed() -> bool:
        return (await http(lb.port, path="/", host=HOST)).status == 200

    await eventually(routed, timeout=15)
    # Each worker follows the table on its own, and accepts only once it has it
    # (LB_ROUTES_WAIT): none answers the route 404/503 while the other serves it, so every
    # request is served and counted under the route. New connections: the kernel spreads
    # them over both workers.
    statuses = [(await http(lb.port, path="/", host=HOST)).status for _ in range(40)]
    assert statuses == [200] * 40
    served = 41

    async def merged() -> int | None:
        r = await http(lb.admin_port, path="/stats/routes", host="127.0.0.1")
        own: int = r.json()["routes"].get(HOST, {}).get("requests", 0)
        return own if own >= served else None

    own = await eventually(merged, timeout=30, step=0.1)  # each worker publishes every s

    async def pushed_all() -> bool:
        rows = await operator.sql(
            "SELECT (routes -> %s ->> 'requests')::int FROM proxy_stats ORDER BY at DESC LIMIT 1",
            (HOST,),
        )
        return rows == [(own,)]

    await eventually(pushed_all, timeout=15, step=0.1)
    lb_id = (tmp_path / "lb" / "id").read_text().strip()
    assert await operator.sql("SELECT DISTINCT lb_id FROM proxy_stats") == [(lb_id,)]
    metrics = (await p.status())["metrics"]
    assert metrics is not None and metrics["load_balancers"] == 1
    assert metrics["requests_per_s"] > 0 and metrics["error_rate"] is not None
