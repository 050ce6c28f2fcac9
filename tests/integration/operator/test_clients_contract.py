"""The contracts other services consume, over real sockets: a real ``zeitwork operator``
process driven by the agent's ``OperatorClient``, the load balancer's ``RoutesClient`` and
the edge's ``CertificateClient`` (the code those services run in production)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import BuiltImage
from tests.integration.operator.test_certificates_api import self_signed
from zeitwork.clients.certificates import CertificateClient, CertificateRecord
from zeitwork.clients.operator import OperatorClient
from zeitwork.clients.routes import RoutesClient
from zeitwork.wire.agent import Heartbeat, InstanceStatusReport, NodeRegistration
from zeitwork.wire.common import CapacityModel, ResourcesModel

ADMIN = "zw_contract-test-admin-token-0123456789abcdef"


@pytest.fixture
def operator_url(migrated_database: str, tmp_path: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PORT", "ENVIRONMENT")}
    env |= {
        "DATABASE_URL": migrated_database,
        "ZEITWORK_ADMIN_TOKEN": ADMIN,
        "ZEITWORK_DATA_DIR": str(tmp_path / "data"),
        "HOST": "127.0.0.1",
        "PORT": "0",
    }
    log = tmp_path / "operator.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zeitwork", "operator"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"operator\.started\s.*port=(\d+)", log.read_text())
            if match:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{match.group(1)}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_agent_lb_and_edge_clients_against_a_real_operator(
    operator_url: str, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    admin = httpx.AsyncClient(base_url=operator_url, headers={"Authorization": f"Bearer {ADMIN}"})
    agent = OperatorClient(base_url=operator_url)
    try:
        tokens = {}
        for scope in ("join", "proxy"):
            r = await admin.post("/api/v1/tokens", json={"scope": scope, "name": "contract"})
            tokens[scope] = r.json()["token"]
        routes = RoutesClient(base_url=operator_url, token=tokens["proxy"])
        edge = CertificateClient(base_url=operator_url, token=tokens["proxy"])

        # the agent registers, heartbeats and reads its (empty) assignments
        registered = await agent.register(
            NodeRegistration(
                hostname=f"contract-{uuid.uuid4().hex[:6]}",
                ip_address="10.0.0.5",
                resources=ResourcesModel(vcpu=2, memory=2048),
                runtime="oci",
            ),
            join_token=tokens["join"],
        )
        assert registered.node_token
        agent.use_token(registered.node_token)
        cap = CapacityModel(vcpu=2, memory=2048, disk=0)
        await agent.heartbeat(registered.node_id, Heartbeat(capacity=cap, used=cap, available=cap))
        first = await agent.wait_assignments(registered.node_id, version=None, wait=0)
        assert first.instances == []
        table = await routes.fetch()

        # an admin imports an image and places an instance: the agent's long-poll wakes
        poll = asyncio.create_task(
            agent.wait_assignments(registered.node_id, version=first.version, wait=20)
        )
        r = await admin.post(
            "/api/v1/images/import?name=web",
            content=busybox_image.path.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert r.status_code == 201, r.text
        image = r.json()
        r = await admin.post(
            "/api/v1/instances",
            json={
                "image_id": image["id"],
                "resources": {"vcpu": 1, "memory": 256},
                "default_port": 8080,
                "environment_variables": {"GREETING": "hi"},
            },
        )
        assert r.status_code == 201, r.text
        placed = time.monotonic()
        got = await asyncio.wait_for(poll, 10)
        assert time.monotonic() - placed < 1.5
        [assigned] = got.instances
        assert assigned.image.digest == busybox_image.digest
        assert assigned.environment_variables == {"GREETING": "hi"}

        # it downloads the archive, verified by digest
        dest = tmp_path / "dl.tar"
        announced = await agent.download_image(
            assigned.image.id, dest, expected_digest=assigned.image.digest
        )
        assert announced == busybox_image.digest
        assert dest.read_bytes() == busybox_image.path.read_bytes()

        # the load balancer's long-poll wakes when the instance runs
        lb_poll = asyncio.create_task(routes.fetch(version=table.version, wait=20))
        await agent.report_state(assigned.id, InstanceStatusReport(state="starting"))
        await agent.report_state(
            assigned.id,
            InstanceStatusReport(state="running", ip_address="10.200.0.9", port=8080),
        )
        table2 = await asyncio.wait_for(lb_poll, 10)
        assert [b.address for b in table2.default_backends] == ["10.200.0.9:8080"]

        # the edge stores a certificate and takes a lease
        cert, key, _ = self_signed("shop.example.com")
        await edge.put(
            CertificateRecord(
                domain="shop.example.com", cert_pem=cert, key_pem=key, status="issued"
            )
        )
        [record] = await edge.list()
        assert (record.domain, record.status, record.key_pem) == ("shop.example.com", "issued", key)
        assert await edge.acquire_lease("shop.example.com", "edge-a", 60) is True
        assert await edge.acquire_lease("shop.example.com", "edge-b", 60) is False
        await edge.release_lease("shop.example.com", "edge-a")
        assert await edge.acquire_lease("shop.example.com", "edge-b", 60) is True
        await routes.aclose()
        await edge.aclose()
    finally:
        await agent.aclose()
        await admin.aclose()
