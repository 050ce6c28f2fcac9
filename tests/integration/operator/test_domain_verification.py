"""Domain verification against a real DNS server on a local UDP socket: the TXT record at
``_zeitwork.<name>`` must hold the domain's token; then the route table says the domain is
verified (which the edges require before ordering an ACME certificate)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import assert_problem
from zeitwork.operator.principal import Scope
from zeitwork.wire.routes import RouteTable


class TxtServer(asyncio.DatagramProtocol):
    """Answers TXT questions from ``records``; SERVFAIL for names in ``broken``."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.broken: set[str] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.questions: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".")
        self.questions.append(name)
        if name in self.broken:
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.records:
            texts = [f'"{value}"' for value in self.records[name]]
            reply.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", texts))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[TxtServer, int]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(TxtServer, local_addr=("127.0.0.1", 0))
    yield server, transport.get_extra_info("sockname")[1]
    transport.close()


async def test_verify_a_domain_through_dns(
    operator_factory: OperatorFactory, dns_server: tuple[TxtServer, int]
) -> None:
    server, port = dns_server
    op: Operator = await operator_factory(dns_servers=f"127.0.0.1:{port}")
    h = op.headers()
    p = (await op.client.post("/api/v1/projects", headers=h, json={"name": "Verify"})).json()
    r = await op.client.post(
        "/api/v1/domains", headers=h, json={"name": "shop.example.com", "project_id": p["id"]}
    )
    domain = r.json()
    record = domain["verification_record"]
    assert record["type"] == "TXT" and record["name"] == "_zeitwork.shop.example.com"
    token = record["value"]
    assert len(token) >= 24
    got = (await op.client.get(f"/api/v1/domains/{domain['id']}", headers=h)).json()
    assert got["verification_record"] == record and got["verified"] is False
    verify = f"/api/v1/domains/{domain['id']}/verify"

    # no record yet: 409 naming the record to publish; nothing changes
    r = await op.client.post(verify, headers=h)
    assert_problem(r, 409)
    assert "_zeitwork.shop.example.com" in r.json()["detail"] and token in r.json()["detail"]
    # a wrong value is not enough
    server.records["_zeitwork.shop.example.com"] = ["something-else"]
    assert_problem(await op.client.post(verify, headers=h), 409)
    # the DNS server failing is a 503, not a verdict
    server.broken.add("_zeitwork.shop.example.com")
    assert_problem(await op.client.post(verify, headers=h), 503)
    server.broken.clear()
    # a proxy token may read domains but not verify them
    proxy = op.headers(await op.token(Scope.PROXY))
    assert_problem(await op.client.post(verify, headers=proxy), 403)
    assert_problem(await op.client.post(f"/api/v1/domains/{uuid.uuid4()}/verify", headers=h), 404)

    # bind it so it is in the route table, then publish the token and verify
    dep_id = await _deployment(op, p["id"])
    await op.client.put(
        f"/api/v1/domains/{domain['id']}", headers=h, json={"deployment_id": dep_id}
    )
    before = RouteTable.model_validate(
        (await op.client.get("/api/v1/routes", headers=proxy)).json()
    )
    [route] = before.routes
    assert route.verified is False
    server.records["_zeitwork.shop.example.com"] = ["unrelated", token]
    r = await op.client.post(verify, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["verified"] is True and r.json()["verified_at"]
    assert r.json()["verification_record"] is None
    after = RouteTable.model_validate((await op.client.get("/api/v1/routes", headers=proxy)).json())
    assert after.version > before.version
    [route] = after.routes
    assert route.verified is True
    # verifying again is a no-op (no DNS question, no table bump)
    asked = len(server.questions)
    assert (await op.client.post(verify, headers=h)).status_code == 200
    assert len(server.questions) == asked
    again = RouteTable.model_validate((await op.client.get("/api/v1/routes", headers=proxy)).json())
    assert again.version == after.version


async def test_wildcard_domain_record_is_at_the_parent(
    operator_factory: OperatorFactory, dns_server: tuple[TxtServer, int]
) -> None:
    server, port = dns_server
    op = await operator_factory(dns_servers=f"127.0.0.1:{port}")
    h = op.headers()
    p = (await op.client.post("/api/v1/projects", headers=h, json={"name": "Wild"})).json()
    r = await op.client.post(
        "/api/v1/domains", headers=h, json={"name": "*.apps.example.com", "project_id": p["id"]}
    )
    record = r.json()["verification_record"]
    assert record["name"] == "_zeitwork.apps.example.com"
    server.records["_zeitwork.apps.example.com"] = [record["value"]]
    r = await op.client.post(f"/api/v1/domains/{r.json()['id']}/verify", headers=h)
    assert r.status_code == 200 and r.json()["verified"] is True


async def _deployment(op: Operator, project_id: str) -> str:
    from tests.integration.operator.fleet import ready_image, ready_node

    await ready_node(op)
    image = await ready_image(op)
    r = await op.client.post(
        "/api/v1/deployments",
        headers=op.headers(),
        json={
            "project_id": project_id,
            "image_id": image,
            "replicas": 1,
            "resources": {"vcpu": 1, "memory": 512},
            "port": 8080,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
