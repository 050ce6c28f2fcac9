"""The release wheel really carries the mypyc-compiled proxy core, and it proxies traffic.

Builds the wheel the way ``make build`` and ``scripts/install.sh`` do (an isolated PEP 517
build, so ``hatch_build.py`` runs with its own build dependencies), unpacks it into a
directory put first on ``PYTHONPATH``, and runs ``zeitwork load-balancer`` from it against
real origin servers; then runs the proxy, edge and load balancer suites with the compiled
modules. Costs about a minute: ~20 s mypyc and the C compiler, ~35 s the suites.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.lb.conftest import (  # fixtures used below, imported to register them
    LBProcess,
    MakeOrigin,
    http,
    lb_process,
    make_origin,
)

__all__ = ["lb_process", "make_origin"]

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
COMPILED_MODULES = {
    "proxy": (
        "server",
        "config",
        "engine",
        "client",
        "connection",
        "state",
        "output",
        "http1",
        "exchange",
        "tunnel",
        "responses",
        "websocket",
        "upstream",
        "headers",
        "backends",
        "balancing",
        "health",
        "routing",
        "types",
        "http2",
        "h2_stream",
        "h2_rules",
        "h2_hpack",
    ),
    "edge": (
        "engine",
        "tls_transport",
        "policy",
        "rate_limit",
        "security_headers",
        "cors",
        "redirect",
    ),
}


def _build(out: Path, **env: str) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("zeitwork-*.whl")
    return wheel


@pytest.fixture(scope="module")
def compiled_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("compiled-wheel")
    # ZEITWORK_REQUIRE_COMPILED: a silent fall-back to pure Python would fail the build here
    wheel = _build(base / "dist", ZEITWORK_REQUIRE_COMPILED="1")
    site = base / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_release_wheel_is_compiled(compiled_site: Path) -> None:
    (wheel,) = (compiled_site.parent / "dist").glob("zeitwork-*.whl")
    assert "-cp3" in wheel.name and "linux" in wheel.name, wheel.name  # platform wheel
    for package, names in COMPILED_MODULES.items():
        for name in names:
            assert list((compiled_site / "zeitwork" / package).glob(f"{name}.*.so")), name
            # the source stays beside it (tracebacks)
            assert (compiled_site / "zeitwork" / package / f"{name}.py").is_file()
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, zeitwork.proxy as p, zeitwork.proxy.server as s, "
            "zeitwork.edge.policy as b; "
            "print(json.dumps([s.__file__, b.__file__, p.core_compiled()]))",
        ],
        env={**os.environ, "PYTHONPATH": str(compiled_site)},
        capture_output=True,
        text=True,
        check=True,
    )
    server_file, policy_file, compiled = json.loads(probe.stdout)
    assert server_file.startswith(str(compiled_site)) and server_file.endswith(".so")
    assert policy_file.endswith(".so")
    assert compiled is True


async def test_compiled_load_balancer_proxies_real_traffic(
    compiled_site: Path, make_origin: MakeOrigin, lb_process: Callable[..., LBProcess]
) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await asyncio.to_thread(
        lb_process,
        LB_BACKENDS=f"{a.address},{b.address}",
        PYTHONPATH=str(compiled_site),
    )
    core = [json.loads(x) for x in lb.log.read_text().splitlines() if '"proxy.core"' in x]
    assert core and core[0]["compiled"] is True
    names = Counter([(await http(lb.port, path="/who")).body for _ in range(6)])
    assert names == {b"a": 3, b"b": 3}
    body = os.urandom(300_000)
    echoed = await http(lb.port, "POST", "/echo", body=body)
    assert echoed.status == 200 and echoed.body == body
    bad = await http(lb.port, path="/", headers={"Transfer-Encoding": "chunked, identity"})
    assert bad.status in (400, 501)


@pytest.mark.timeout(900)  # a whole suite in one test: more than the 300 s default
def test_proxy_edge_and_lb_suites_pass_on_the_compiled_build(compiled_site: Path) -> None:
    """The same behaviour tests, with every compiled module imported from the wheel."""
    suites = [
        "tests/unit/proxy",
        "tests/unit/edge",
        "tests/integration/lb",
        "tests/integration/edge",
    ]
    done = subprocess.run(
        # its own base temp dir: the default one would rotate this session's away
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(compiled_site.parent / "suites"),
            *suites,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(compiled_site)},
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_opt_out_builds_pure_python(tmp_path: Path) -> None:
    wheel = _build(tmp_path, ZEITWORK_PURE_PYTHON="1")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]
