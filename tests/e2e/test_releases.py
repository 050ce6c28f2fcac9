"""Releases end to end (issue 16 item 12): a real operator process, node agents on two
network-namespace "hosts" running real runc instances, a real load balancer and edge proxy,
and a client sending about 60 requests/s through the edge the whole time (half on one
keep-alive connection, half on a new connection each), every answer naming the version that
served it.

Steps: (a) rolling v1 -> v2, (b) blue-green v2 -> v3, (c) three bad releases (one exits at
start, one never listens, one whose health check answers 500), each reverted by itself,
(d) rollback to v2, (e) scale 3 -> 1 -> 3, (f) drain of one host, (g) the operator
SIGKILLed in the middle of a rollout and restarted, (h) a node agent SIGKILLed in the
middle of a rollout and restarted. Zero failed requests in all of them;
after each step only the expected version answers and no instance of an old release runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.lan import Lan
from tests.e2e.releases_kit import (
    HEALTH,
    STRATEGY,
    Load,
    answers_only,
    data_plane,
    deploy,
    only_version_running,
    settled,
    version_entries,
)
from tests.images import build_image
from tests.integration.agent.harness import AgentHost
from tests.integration.agent.operator_process import import_image

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


async def test_releases_under_load_fail_no_request(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    migrated_database: str,
    tmp_path: Path,
) -> None:
    images = {
        name: build_image(tmp_path / f"{name}.tar", layers=[version_entries(name)], **options)
        for name, options in {
            "v1": {},
            "v2": {},
            "v3": {},
            "exits": {"entrypoint": ["/bin/false"]},
            "silent": {"entrypoint": ["/bin/sleep", "3600"]},
            "v500": {},
        }.items()
    }
    load: Load | None = None
    async with data_plane(lan, hosts, migrated_database, tmp_path) as plane:
        operator, agents, app, domain = plane.operator, plane.agents, plane.app, plane.domain
        try:
            async with operator.client() as api:
                ids = {
                    name: await import_image(operator, image.path, name)
                    for name, image in images.items()
                }

                # v1, before the load starts
                await deploy(api, app, ids["v1"], replicas=2)
                v1 = await settled(api, app, 1)
                assert v1["state"] == "active", v1
                await only_version_running(api, app, 1, 2)
                load = Load(plane.edge.port, domain)

                async def serves(version: str) -> None:
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        with contextlib.suppress(OSError, ValueError, IndexError, TimeoutError):
                            status, body = await load.one_request()
                            if status == 200 and body.strip() == version:
                                return
                        await asyncio.sleep(0.2)
                    raise AssertionError(f"{version} not served through the edge")

                await serves("v1")
                load.start()

                # (a) rolling v1 -> v2
                await deploy(api, app, ids["v2"])
                assert (await settled(api, app, 2))["state"] == "active"
                await only_version_running(api, app, 2, 2)
                await answers_only(load, "v2")

                # (b) blue-green v2 -> v3
                await deploy(api, app, ids["v3"], strategy={**STRATEGY, "type": "bluegreen"})
                assert (await settled(api, app, 3))["state"] == "active"
                await only_version_running(api, app, 3, 2)
                await answers_only(load, "v3")

                # (c) three bad releases, each reverted by itself while v3 keeps serving
                bad = [
                    (ids["exits"], {}, "exit"),
                    (ids["silent"], {}, "8080"),
                    (ids["v500"], {"health_check": {**HEALTH, "path": "/cgi-bin/fail"}}, "500"),
                ]
                version = 3
                for image_id, extra, cause in bad:
                    version += 1
                    await deploy(api, app, image_id, **extra)
                    failed = await settled(api, app, version)
                    assert failed["state"] == "failed", failed
                    assert cause in (failed["error"] or ""), failed
                    current = (await api.get(f"/api/v1/projects/{app}/status")).json()
                    assert current["current_release"]["version"] == 3
                    await only_version_running(api, app, 3, 2)
                    await answers_only(load, "v3")

                # (d) rollback to v2: a new release made from v2
                rolled = await api.post(f"/api/v1/projects/{app}/rollback", json={"version": 2})
                assert rolled.status_code == 201, rolled.text
                back = rolled.json()
                assert back["reason"] == "rollback" and back["image_id"] == ids["v2"]
                assert (await settled(api, app, back["version"]))["state"] == "active"
                await only_version_running(api, app, back["version"], 2)
                await answers_only(load, "v2")

                # (e) scale 3 -> 1 -> 3
                for replicas in (3, 1, 3):
                    scaled = await api.put(
                        f"/api/v1/projects/{app}/scale", json={"replicas": replicas}
                    )
                    assert scaled.status_code == 200, scaled.text
                    await only_version_running(api, app, back["version"], replicas)
                    await answers_only(load, "v2", seconds=1.0)

                # (f) drain one host: its instances are replaced on the other, health-gated
                status = (await api.get(f"/api/v1/projects/{app}/status")).json()
                busy_node = status["instances"][0]["node_id"]
                drained = await api.post(f"/api/v1/nodes/{busy_node}/drain")
                assert drained.status_code in (200, 202), drained.text
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    status = (await api.get(f"/api/v1/projects/{app}/status")).json()
                    live = [i for i in status["instances"] if i["state"] == "running"]
                    if len(live) == 3 and all(i["node_id"] != busy_node for i in live):
                        break
                    await asyncio.sleep(0.3)
                else:
                    raise AssertionError(f"drain did not move the instances: {status}")
                await answers_only(load, "v2", seconds=1.0)
                undrained = await api.post(f"/api/v1/nodes/{busy_node}/undrain")
                assert undrained.status_code in (200, 202), undrained.text

            # (g) the operator SIGKILLed in the middle of a rollout, then restarted
            async with operator.client() as api:
                release = await deploy(api, app, ids["v1"])
            assert operator.process is not None
            deadline = time.monotonic() + 30
            async with operator.client() as api:
                while time.monotonic() < deadline:  # kill once the first surge instance exists
                    status = (await api.get(f"/api/v1/projects/{app}/status")).json()
                    if any(i["version"] == release["version"] for i in status["instances"]):
                        break
                    await asyncio.sleep(0.1)
            operator.process.send_signal(signal.SIGKILL)
            operator.process.wait(10)
            operator.start(same_port=True)
            await operator.wait_ready()
            async with operator.client() as api:
                assert (await settled(api, app, release["version"]))["state"] == "active"
                await only_version_running(api, app, release["version"], 3)
            await answers_only(load, "v1")

            # (h) a node agent SIGKILLed in the middle of a rollout, then restarted: it re-adopts
            # its instances, the rollout goes on, nothing is placed twice
            async with operator.client() as api:
                release = await deploy(api, app, ids["v2"])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    status = (await api.get(f"/api/v1/projects/{app}/status")).json()
                    if any(i["version"] == release["version"] for i in status["instances"]):
                        break
                    await asyncio.sleep(0.1)
                agents[0].kill()
                agents[0].start()
                await agents[0].wait_ready()
                assert (await settled(api, app, release["version"]))["state"] == "active"
                await only_version_running(api, app, release["version"], 3)
            await answers_only(load, "v2")

            await load.stop()
            assert load.failures == [], load.failures[:20]
            assert len(load.answers) > 500
        finally:
            if load is not None and not load._stop.is_set():
                await load.stop()
