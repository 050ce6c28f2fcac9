"""``zeitwork dev`` with its own registry: an image pushed there with skopeo is deployed with
``zeitwork deploy --image 127.0.0.1:PORT/app:v2``, the node pulls it from the registry (its
blob store holds the layers; the operator archive route is not what fed it), and the app
answers through the edge. Real processes: dev, docker-registry, operator, agent, LB, edge."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.dev_platform import Platform, cli, dev_platform, until
from tests.images import INDEX_HTML, BuiltImage
from tests.registry import registry_available

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.slow,
    pytest.mark.skipif(not registry_available(), reason="needs docker-registry and skopeo"),
]


async def test_deploy_by_reference_on_zeitwork_dev(busybox_image: BuiltImage) -> None:
    if os.geteuid() != 0:
        pytest.skip("zeitwork dev needs root")
    # the state outside pytest's shared base temp dir: twice, in long runs on a machine
    # shared with other pytest sessions, the embedded PostgreSQL's files under it vanished
    # or became unreadable while dev was starting (cause not found; never when run alone)
    base = Path(tempfile.mkdtemp(prefix="zw-dev-ref-", dir="/var/tmp"))
    try:
        async with dev_platform(base) as p:  # a free --registry-port, as for every service
            await _deploy_and_check(p, f"127.0.0.1:{p.ports['registry']}", busybox_image)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _deploy_and_check(p: Platform, registry: str, image: BuiltImage) -> None:
    async def started() -> bool:
        return "Zeitwork is running" in p.output()

    await until(started, within=120, what="the platform to start", platform=p)
    assert f"image registry  http://{registry}" in p.output()
    push = await asyncio.create_subprocess_exec(
        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
        f"oci-archive:{image.path}", f"docker://{registry}/app:v2",
    )  # fmt: skip
    assert await asyncio.wait_for(push.wait(), 120) == 0
    env = {**os.environ, "OPERATOR_URL": p.url("operator"), "ZEITWORK_DATA_DIR": str(p.data_dir)}
    app = f"ref-{uuid.uuid4().hex[:6]}"
    domain = f"{app}.test"
    deployed = await cli(
        env, "deploy", "--app", app, "--image", f"{registry}/app:v2",
        "--port", "8080", "--memory", "64", "--domain", domain,
    )  # fmt: skip
    assert "v1 is the current release" in deployed, deployed
    headers = {"Authorization": f"Bearer {p.token}"}
    async with (
        httpx.AsyncClient(base_url=p.url("operator"), headers=headers, timeout=30) as api,
        httpx.AsyncClient(timeout=5) as web,
    ):
        status = (await api.get(f"/api/v1/projects/{app}/status")).json()
        image_id = status["current_release"]["image_id"]
        got = (await api.get(f"/api/v1/images/{image_id}")).json()
        assert got["digest"] == image.digest
        assert got["location"] == f"{registry}/app@{image.digest}"  # no copy: it is there

        async def served() -> bool:
            try:
                r = await web.get(p.url("http") + "/", headers={"Host": domain})
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.content == INDEX_HTML

        await until(served, within=90, what="the app through the edge", platform=p)
    # the node's blob store holds the image's config and layer: pulled from the registry
    blobs = [b for b in p.data_dir.rglob("blobs/sha256/*") if "registry" not in b.parts]
    assert len(blobs) == 2, blobs
    p.process.send_signal(signal.SIGINT)  # Ctrl-C: the registry stops last, cleanly
    assert await asyncio.wait_for(p.process.wait(), 90) == 0, p.output()[-3000:]
    output = p.output()
    assert output.index("dev: stopping operator") < output.index("dev: stopping registry")
