"""Release figures (issue 16 item 13), as root: ``python benchmarks/deploy.py``
(``make bench-deploy``).

A real platform on this machine: an embedded PostgreSQL, the operator, one node agent (runc,
its own bridge and subnet) with the images already in its cache, a load balancer and an
edge proxy, and a steady client (about 60 requests/s through the edge, half keep-alive,
half a new connection each). For 1, 3 and 10 replicas it measures:

- deploy: from the deploy call to every replica of the new release serving and only the
  new version answering through the edge (rolling, ``max_surge`` 1, ``min_healthy_time``
  1 s, checks every 0.2 s);
- rollback: from the rollback call to 100 % of the answers coming from the previous version;
- a failing release (its process exits at start): from the deploy call to the release
  marked failed (reverted), the previous one serving throughout;
- failed requests during each (goal: 0).

Goals on this machine: a 3-replica rolling update in under 5 s plus the waits the health
settings impose (3 x ``min_healthy_time`` here), rollback to 100 % traffic within 3 s, a
failing release detected within one ``healthy_deadline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.releases_kit import (
    Load,
    deploy,
    only_version_running,
    proxies,
    settled,
    version_entries,
)
from tests.images import build_image
from tests.integration.agent.harness import AgentHost, preload
from tests.integration.agent.operator_process import OperatorProcess, import_image

from zeitwork.operator.db import migrate
from zeitwork.operator.db.embedded import EmbeddedPostgres

HEALTH = {"type": "http", "path": "/health", "interval": 0.2, "timeout": 1, "grace_period": 0}
STRATEGY = {
    "type": "rolling",
    "max_surge": 1,
    "min_healthy_time": 1,
    "drain_timeout": 2,
    "stop_timeout": 1,
    "healthy_deadline": 10,
}
RESOURCES = {"vcpu": 0.1, "memory": 32}


async def _traffic_on(load: Load, version: str, since: float, within: float = 30.0) -> float:
    """Seconds from ``since`` until every answer is ``version`` (for at least 1 s after)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        later = [(at, v) for at, _how, v in load.answers if at >= since]
        others = [at for at, v in later if v != version]
        switch = max(others) if others else since
        tail = [at for at, _v in later if at > switch]
        if tail and tail[-1] - switch >= 1.0:
            return switch - since
    raise TimeoutError(f"traffic never moved to {version}")


async def run(replica_counts: list[int]) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="zw-bench-deploy-"))
    database = await asyncio.to_thread(EmbeddedPostgres.start, root / "pg")
    await asyncio.to_thread(migrate.upgrade, database.url)
    operator = OperatorProcess(database_url=database.url, root=root / "operator")
    agent = AgentHost(root=root / "node", extra_env={"ZEITWORK_HEARTBEAT_INTERVAL": "1"})
    proxies_up = contextlib.AsyncExitStack()  # the balancer and the edge, once started
    load: Load | None = None
    rows: list[dict[str, Any]] = []
    images = {
        name: build_image(root / f"{name}.tar", layers=[version_entries(name)], **options)
        for name, options in {
            "blue": {},
            "green": {},
            "broken": {"entrypoint": ["/bin/false"]},
        }.items()
    }
    try:
        operator.start()
        await operator.wait_ready()
        for image in images.values():
            await preload(agent.data_dir, image)  # a cached image: no download in the figures
        agent.extra_env |= {
            "OPERATOR_URL": operator.url(),
            "ZEITWORK_JOIN_TOKEN": await operator.join_token(),
        }
        agent.start()
        await agent.wait_ready()
        async with operator.client() as api:
            ids = {n: await import_image(operator, i.path, n) for n, i in images.items()}
            token = (await api.post("/api/v1/tokens", json={"scope": "proxy"})).json()["token"]
            _lb, edge = await proxies_up.enter_async_context(proxies(root, operator.url(), token))
            edge_port = edge.port

            for replicas in replica_counts:
                app = f"bench-{replicas}-{uuid.uuid4().hex[:4]}"
                project = await api.post("/api/v1/projects", json={"name": app, "slug": app})
                project.raise_for_status()
                domain = f"{app}.bench"
                bound = await api.post(
                    "/api/v1/domains",
                    json={
                        "name": domain,
                        "project_id": project.json()["id"],
                        "environment": "production",
                    },
                )
                bound.raise_for_status()
                opts = {"health_check": HEALTH, "strategy": STRATEGY, "resources": RESOURCES}
                first = await deploy(api, app, ids["blue"], replicas=replicas, **opts)
                await settled(api, app, first["version"], timeout=120)
                await only_version_running(api, app, first["version"], replicas, timeout=120)
                load = Load(edge_port, domain)
                load.start()
                await _traffic_on(load, "blue", time.monotonic())
                row: dict[str, Any] = {"replicas": replicas}

                failures = len(load.failures)
                began = time.monotonic()
                green = await deploy(api, app, ids["green"], **opts)
                await settled(api, app, green["version"], timeout=180)
                await only_version_running(api, app, green["version"], replicas, timeout=60)
                row["deploy_s"] = time.monotonic() - began
                await _traffic_on(load, "green", began)
                row["deploy_failed"] = len(load.failures) - failures

                failures = len(load.failures)
                began = time.monotonic()
                back = await api.post(f"/api/v1/projects/{app}/rollback", json={})
                back.raise_for_status()
                row["rollback_traffic_s"] = await _traffic_on(load, "blue", began)
                await settled(api, app, back.json()["version"], timeout=180)
                row["rollback_failed"] = len(load.failures) - failures

                failures = len(load.failures)
                began = time.monotonic()
                broken = await deploy(api, app, ids["broken"], **opts)
                failed = await settled(api, app, broken["version"], timeout=120)
                row["revert_s"] = time.monotonic() - began
                row["revert_state"] = failed["state"]
                await asyncio.sleep(1.0)  # the load keeps running on the previous release
                row["revert_failed"] = len(load.failures) - failures
                row["requests"] = len(load.answers)
                await load.stop()
                load = None
                rows.append(row)
    finally:
        if load is not None:
            await load.stop()
        await proxies_up.aclose()
        operator.stop()
        await agent.cleanup()
        await asyncio.to_thread(database.stop)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,3,10", help="comma-separated replica counts")
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    rows = asyncio.run(run(counts))
    print(
        f"{'replicas':>8} {'deploy s':>9} {'failed':>6} {'rollback s':>10} {'failed':>6} "
        f"{'revert s':>8} {'state':>7} {'failed':>6} {'requests':>8}"
    )
    for r in rows:
        print(
            f"{r['replicas']:>8} {r['deploy_s']:>9.2f} {r['deploy_failed']:>6} "
            f"{r['rollback_traffic_s']:>10.2f} {r['rollback_failed']:>6} {r['revert_s']:>8.2f} "
            f"{r['revert_state']:>7} {r['revert_failed']:>6} {r['requests']:>8}"
        )
    print(
        "config: rolling, max_surge 1, min_healthy_time 1 s, http check every 0.2 s, "
        "drain 2 s, healthy_deadline 10 s; images cached on the node; deploy = call -> every "
        "replica of the new release serving and only it answering through the edge"
    )


if __name__ == "__main__":
    main()
