"""Builds from source on the whole platform (``zeitwork dev`` as a real subprocess: operator,
node agent with runc, load balancer, edge proxy, builder with buildah): ``zeitwork deploy``
in a directory with a Dockerfile builds it, releases it and the new version answers through
the edge; a one-line change deployed the same way replaces it."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.dev_platform import Platform, cli, until
from tests.images import BuiltImage

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


def _app(directory: Path, base: BuiltImage, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "Dockerfile").write_text(
        f"FROM oci-archive:{base.path}\n"
        "USER root\n"
        "COPY index.html /www/index.html\n"
        "USER app\n"
        "EXPOSE 8080\n"
    )
    (directory / "index.html").write_text(text)


async def test_deploy_in_a_directory_is_built_and_served_through_the_edge(
    platform: Platform, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    p = platform

    async def started() -> bool:
        return "Zeitwork is running" in p.output()

    await until(started, within=120, what="the platform to start", platform=p)
    assert "dev: buildah is not installed" not in p.output()
    app = f"built-{uuid.uuid4().hex[:6]}"
    domain = f"{app}.test"
    source = tmp_path / "src"
    env = {**os.environ, "OPERATOR_URL": p.url("operator"), "ZEITWORK_DATA_DIR": str(p.data_dir)}

    async def serves(text: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=5) as web:
                answer = await web.get(p.url("http") + "/", headers={"Host": domain})
                return answer.status_code == 200 and answer.text == text
        return False

    # v1 from the image with small resources: a build's release keeps the current settings
    # (the dev node has room for a rolling surge of 0.25 vCPU, not of the default 1 vCPU)
    imported = await cli(env, "images", "import", str(busybox_image.path), "--name", "base")
    image_id = imported.splitlines()[1].split()[0]
    out = await cli(
        env,
        "deploy",
        "--app",
        app,
        "--image",
        image_id,
        "--vcpu",
        "0.25",
        "--memory",
        "64",
        "--domain",
        domain,
    )
    assert "v1 is the current release" in out, out

    _app(source, busybox_image, "<h1>built v2</h1>\n")
    out = await cli(env, "deploy", "--app", app, "--dir", str(source))
    assert "context uploaded" in out and "STEP 3/5: COPY" in out, out
    assert "v2 is the current release" in out, out
    await until(lambda: serves("<h1>built v2</h1>\n"), within=30, what="v2", platform=p)

    _app(source, busybox_image, "<h1>built v3</h1>\n")
    out = await cli(env, "deploy", "--app", app, "--dir", str(source))
    assert "Using cache" in out and "v3 is the current release" in out, out
    await until(lambda: serves("<h1>built v3</h1>\n"), within=30, what="v3", platform=p)

    listed = await cli(env, "builds", app)
    assert len([line for line in listed.splitlines() if "succeeded" in line]) == 2, listed
