"""The whole OpenAPI document of a live operator (a real process on a real socket, on the
session's embedded PostgreSQL) fuzzed with schemathesis: no request may get a 5xx, and a
documented response must match its schema.

Bounded so it takes about a minute on two cores: a few examples per operation, every phase
(schema examples, boundary values, random fuzzing, stateful sequences over the links
schemathesis infers: create a node, then heartbeat it, ...), a fixed seed so a failure
reproduces (the report prints a curl line for each). Long-polls and streams are asked not
to wait.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import ready_node
from tests.integration.operator.live_operator import ADMIN, OperatorProcess
from zeitwork.operator.principal import Scope

SEED = 20261207
MAX_EXAMPLES = 6
TIME_BUDGET = 60  # seconds for the whole run; schemathesis stops generating when spent

CONFIG = """\
[generation]
database = "none"

# Long-polls and streams (route table, agent assignments, logs and events with follow)
# are asked not to wait: a request that waits is not a server error, only slow.
[parameters]
"query.wait" = 0
"query.follow" = false
"""


@pytest.fixture
def live_operator(migrated_database: str, tmp_path: Path) -> Iterator[str]:
    operator = OperatorProcess(
        tmp_path / "data", tmp_path / "operator.log", database_url=migrated_database
    )
    try:
        port = operator.wait_started()
        yield f"http://127.0.0.1:{port}"
    finally:
        operator.stop()
    log = operator.log.read_text(errors="replace")
    assert '"request.unhandled_error"' not in log, log[-20000:]


def _st() -> str:
    beside = Path(sys.executable).parent / "st"
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.slow
def test_no_request_gets_a_server_error(live_operator: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [
        _st(),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{live_operator}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--header",
        f"Authorization: Bearer {ADMIN}",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(TIME_BUDGET),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-shrink",
        # an OCI archive body (application/x-tar) cannot be generated from a schema; the
        # import route has its own tests with real, corrupt and truncated archives
        "--exclude-name",
        "POST /api/v1/images/import",
        "--warnings",
        "off",
    ]
    run = subprocess.run(
        argv, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=TIME_BUDGET + 120
    )
    print(run.stdout[-3000:])  # the summary, shown with -s or -rP
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-5000:]
    assert "Tested: " in run.stdout  # it did run the operations


# --- what the fuzzer found, pinned as plain requests (fast, every run) ---


async def test_nul_and_lone_surrogates_are_422_not_500(operator: Operator) -> None:
    projects = "/api/v1/projects"
    for content in (b'{"name": "shop\\u0000"}', b'{"name": "shop\\ud800"}'):
        r = await operator.client.post(
            projects,
            headers=operator.headers() | {"content-type": "application/json"},
            content=content,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "name"
    r = await operator.client.get(f"{projects}?name=a%00b", headers=operator.headers())
    assert r.status_code == 422, r.text
    node_id, token = await ready_node(operator)
    heartbeat = {
        "capacity": {"vcpu": 2, "memory": 2048},
        "used": {"vcpu": 0, "memory": 0},
        "available": {"vcpu": 2, "memory": 2048},
        "instances": [{"id": str(uuid.uuid4()), "state": "failed", "reason": "oom\x00"}],
    }
    r = await operator.client.post(
        f"/api/v1/nodes/{node_id}/heartbeat", headers=operator.headers(token), json=heartbeat
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "instances.0.reason"


@pytest.mark.parametrize("disk", [2**31, 2**63, 10**30])
async def test_a_number_beyond_its_column_is_422_not_500(operator: Operator, disk: int) -> None:
    join = await operator.token(Scope.JOIN)
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(join),
        json={
            "hostname": f"node-{uuid.uuid4().hex[:8]}",
            "ip_address": "10.0.0.10",
            "resources": {"vcpu": 2, "memory": 2048},
            "disk": disk,  # disk_mib is an int4 column
        },
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_less_than_a_millicpu_is_422_not_500(operator: Operator) -> None:
    join = await operator.token(Scope.JOIN)
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(join),
        json={
            "hostname": f"node-{uuid.uuid4().hex[:8]}",
            "ip_address": "10.0.0.10",
            "resources": {"vcpu": 0.0001, "memory": 2048},  # stored in millicpus: 0
        },
    )
    assert r.status_code == 422, r.text
