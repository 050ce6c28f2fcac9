"""ACME against a real Pebble: issuance (HTTP-01, TLS-ALPN-01), renewal, a failed challenge.

Pebble resolves every name through a tiny DNS responder run here (A 127.0.0.1; names that
start with ``fail`` resolve to 127.0.0.2, where nothing listens, so their challenge fails)
and validates against the edge's own HTTP and HTTPS ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.integration.edge.conftest import Conn, EdgeFactory, admin_get, wait_for
from zeitwork.edge.certificates.acme import AcmeIssuer, AcmeOptions
from zeitwork.edge.certificates.manager import account_bridge
from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed"),
]


class _Dns(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or self.transport is None:
            return
        pos, labels = 12, []
        while pos < len(data) and data[pos] != 0:
            n = data[pos]
            labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        qtype = struct.unpack("!H", data[pos + 1 : pos + 3])[0]
        question = data[12 : pos + 5]
        answers = b""
        count = 0
        if qtype == 1:  # A
            ip = (
                bytes([127, 0, 0, 2])
                if labels and labels[0].startswith("fail")
                else bytes([127, 0, 0, 1])
            )
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + ip
            count = 1
        header = data[:2] + struct.pack("!HHHHH", 0x8580, 1, count, 0, 0)
        self.transport.sendto(header + question + answers, addr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pebble:
    directory: str
    management: str
    ca_bundle: Path

    def issuing_root(self) -> str:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_bundle))) as c:
            return c.get(f"{self.management}/roots/0").text


@dataclass
class PebbleEnv:
    pebble: Pebble
    http_port: int
    https_port: int


@pytest.fixture
async def pebble_env(tmp_path: Path) -> AsyncIterator[PebbleEnv]:
    loop = asyncio.get_running_loop()
    dns_transport, _ = await loop.create_datagram_endpoint(_Dns, local_addr=("127.0.0.1", 0))
    dns_port = dns_transport.get_extra_info("sockname")[1]
    ca_cert, ca_key = self_signed_ca("pebble test CA")
    chain, key = issue_leaf(["localhost"], ca_cert_pem=ca_cert, ca_key_pem=ca_key)
    (tmp_path / "pebble-ca.pem").write_text(ca_cert)
    (tmp_path / "pebble.crt").write_text(chain)
    (tmp_path / "pebble.key").write_text(key)
    acme_port, mgmt_port = _free_port(), _free_port()
    http_port, https_port = _free_port(), _free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(tmp_path / "pebble.crt"),
            "privateKey": str(tmp_path / "pebble.key"),
            "httpPort": http_port,
            "tlsPort": https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log = (tmp_path / "pebble.log").open("wb")
    proc = subprocess.Popen(
        ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    pebble = Pebble(
        directory=f"https://localhost:{acme_port}/dir",
        management=f"https://localhost:{mgmt_port}",
        ca_bundle=tmp_path / "pebble-ca.pem",
    )
    verify = ssl.create_default_context(cafile=str(pebble.ca_bundle))

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(verify=verify) as c:
                return (await c.get(pebble.directory)).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await wait_for(up, timeout=20)
        yield PebbleEnv(pebble=pebble, http_port=http_port, https_port=https_port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        dns_transport.close()


def _serial(conn: Conn) -> int:
    return x509.load_der_x509_certificate(conn.ssl_object.getpeercert(True)).serial_number


def _verify_ctx(root_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def test_acme_issue_renew_fail_and_tls_alpn(
    pebble_env: PebbleEnv, make_edge: EdgeFactory
) -> None:
    pebble = pebble_env.pebble
    edge = await make_edge(
        PORT=pebble_env.http_port,
        EDGE_HTTPS_PORT=pebble_env.https_port,
        EDGE_TLS_MODE="acme",
        EDGE_ACME_DIRECTORY=pebble.directory,
        EDGE_ACME_CA_BUNDLE=str(pebble.ca_bundle),
        EDGE_DOMAINS="app.test,fail.test",
        EDGE_ACME_RETRY_BASE=300,
    )
    assert edge.manager is not None

    # 1. issuance over HTTP-01, served with a chain that verifies against Pebble's root
    async def issued() -> bool:
        return edge.tls.has_certificate("app.test")

    await wait_for(issued, timeout=60)
    root = pebble.issuing_root()
    conn = await Conn.open(edge.ports["https"], tls=_verify_ctx(root), sni="app.test")
    first = _serial(conn)
    assert (await conn.request("/hello", host="app.test")).status == 200
    await conn.close()
    store = edge.manager._store
    record = await store.get("app.test")
    assert record is not None and record.status == "issued" and record.source == "acme"
    account = await store.get_account(pebble.directory)
    assert account is not None and "BEGIN PRIVATE KEY" in account.key_pem

    # 2. the failed challenge: status failed, error, attempts, back-off; visible in metrics
    async def failed() -> bool:
        rec = await store.get("fail.test")
        return rec is not None and rec.status == "failed"

    await wait_for(failed, timeout=60)
    bad = await store.get("fail.test")
    assert bad is not None and bad.attempts == 1 and bad.last_error
    assert bad.next_attempt_at is not None
    assert bad.next_attempt_at > datetime.now(UTC) + timedelta(seconds=200)
    _, metrics = await admin_get(edge, "/metrics")
    assert b'zeitwork_edge_certificate_orders_total{result="failed",source="acme"} 1.0' in metrics
    assert b'zeitwork_edge_certificate_expiry_seconds{domain="app.test"}' in metrics
    assert b'zeitwork_edge_certificate_failed_attempts{domain="fail.test"} 1.0' in metrics
    # another pass does not retry before the back-off ends
    await edge.manager.sync_once()
    again = await store.get("fail.test")
    assert again is not None and again.attempts == 1

    # 3. renewal: once two thirds of the lifetime have passed, a new certificate is ordered
    assert record.not_before is not None and record.not_after is not None
    lifetime = record.not_after - record.not_before
    await store.put(
        record.evolve(
            not_before=datetime.now(UTC) - lifetime * 0.7,
            not_after=datetime.now(UTC) + lifetime * 0.3,
        )
    )
    await edge.manager.sync_once()
    renewed = await store.get("app.test")
    assert renewed is not None and renewed.cert_pem != record.cert_pem
    conn = await Conn.open(edge.ports["https"], tls=_verify_ctx(root), sni="app.test")
    assert _serial(conn) != first
    await conn.close()

    # 4. TLS-ALPN-01 through the edge's HTTPS listener (acme-tls/1)
    load, save = account_bridge(store, asyncio.get_running_loop())
    issuer = AcmeIssuer(
        options=AcmeOptions(
            directory=pebble.directory, ca_bundle=str(pebble.ca_bundle), challenge="tls-alpn-01"
        ),
        board=edge.challenges,
        load_account=load,
        save_account=save,
    )
    alpn_record = await asyncio.to_thread(issuer.issue, "alpn.test")
    assert alpn_record.status == "issued"
    names = x509.load_pem_x509_certificate(
        alpn_record.cert_pem.encode()
    ).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["alpn.test"]
    # the challenge certificate is withdrawn afterwards
    assert edge.tls._challenges.get("alpn.test") is None
    assert edge.tls.context_for("alpn.test", acme=True) is None  # not installed, no default
