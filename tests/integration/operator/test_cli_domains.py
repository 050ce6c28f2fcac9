"""The ``domains``, ``images`` and ``instances`` verbs run as real processes against a real
operator (its app on a real socket, the real PostgreSQL): what they print, what they set,
and their one-line refusals with exit status 1 or 2."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.live_server import live_operator
from zeitwork.cli.demo_image import write_demo_archive

pytestmark = pytest.mark.slow

HOST = "shop.example.com"


async def _zeitwork(url: str, token: str, data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPERATOR_URL", "ZEITWORK_TOKEN")}
    env |= {"OPERATOR_URL": url, "ZEITWORK_TOKEN": token, "ZEITWORK_DATA_DIR": str(data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeitwork",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def url(operator: Operator) -> AsyncIterator[str]:
    r = await operator.client.post(
        "/api/v1/projects", headers=operator.headers(), json={"name": "shop"}
    )
    assert r.status_code == 201, r.text
    r = await operator.client.post(
        "/api/v1/domains",
        headers=operator.headers(),
        json={"name": HOST, "project_id": r.json()["id"], "environment": "production"},
    )
    assert r.status_code == 201, r.text
    async with live_operator(operator) as base:
        yield base


async def test_domain_verbs_set_and_show_limits_and_policy(
    operator: Operator, url: str, tmp_path: Path
) -> None:
    async def zw(*args: str) -> tuple[int, str, str]:
        return await _zeitwork(url, operator.admin_token, tmp_path, *args)

    code, out, _ = await zw("domains", "ls", "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["name"] == HOST and listed["verified"] is False

    code, out, _ = await zw("domains", "limit", HOST, "--rps", "20", "--burst", "40")
    assert (code, out) == (0, f"domain {HOST}: 20/s (burst 40)\n")
    code, out, _ = await zw("domains", "limit", HOST, "--path", "/login", "--rps", "0.5")
    assert (code, out) == (0, f"domain {HOST}: 20/s (burst 40), /login 0.5/s\n")
    code, out, _ = await zw("domains", "ls")
    assert code == 0 and "20/s (burst 40), /login 0.5/s" in out and "environment" in out

    code, out, _ = await zw(
        "domains", "policy", HOST, "--cors-origin", "https://a.test", "--frame-options", "off"
    )
    assert code == 0
    assert out.startswith(f"domain {HOST}: edge policy ")
    policy = json.loads(out.split("edge policy ", 1)[1])
    assert policy["cors"]["origins"] == ["https://a.test"]
    assert policy["headers"]["frame_options"] == ""
    # printed as the operator answers it (json.dumps of its edge_policy object)
    r = await operator.client.get("/api/v1/domains", headers=operator.headers())
    assert out == f"domain {HOST}: edge policy {json.dumps(r.json()[0]['edge_policy'])}\n"
    code, out, _ = await zw("domains", "policy", HOST, "--clear")
    assert (code, out) == (0, f"domain {HOST}: edge policy {{}}\n")

    # refusals: the operator's (a bad prefix, 422) and the CLI's own, one line each
    code, out, err = await zw("domains", "limit", HOST, "--path", "login", "--rps", "1")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    code, _, err = await zw("domains", "verify", "nowhere.example.com")
    assert (code, err) == (1, "zeitwork: no domain nowhere.example.com\n")
    code, _, err = await zw("domains", "policy", HOST, "--cors-credentials")
    assert (code, err) == (2, "zeitwork: --cors-credentials needs --cors-origin\n")


async def test_images_import_ls_and_instances(operator: Operator, url: str, tmp_path: Path) -> None:
    async def zw(*args: str) -> tuple[int, str, str]:
        return await _zeitwork(url, operator.admin_token, tmp_path, *args)

    for verb in ("images", "instances"):
        code, out, _ = await zw(verb, "ls", "--json")
        assert (code, json.loads(out)) == (0, [])
    archive = write_demo_archive(tmp_path / "demo.tar")
    code, out, _ = await zw("images", "import", str(archive), "--name", "demo")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "DIGEST", "SIZE"]
    assert row.split()[1:3] == ["demo", "ready"] and row.endswith("MiB")
    code, out, _ = await zw("images", "ls")
    assert code == 0 and out.strip().splitlines()[1].split()[1:3] == ["demo", "ready"]
    code, out, _ = await zw("instances", "ls")
    assert code == 0 and out.split() == [
        "ID",
        "STATE",
        "DESIRED",
        "ADDRESS",
        "NODE",
        "DEPLOYMENT",
        "REASON",
    ]
    code, _, err = await zw("images", "import", str(tmp_path / "none.tar"), "--name", "x")
    assert code == 2 and "does not exist" in err
