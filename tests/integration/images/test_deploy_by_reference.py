"""Deploy by registry reference through the operator's API: a real registry, a real
PostgreSQL, the releases route. The tag is resolved once; the release pins the digest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage, build_image
from tests.integration.operator.conftest import (  # noqa: F401 (fixtures used by name)
    Operator,
    OperatorFactory,
    operator,
    operator_factory,
)
from tests.integration.operator.fleet import assert_problem
from tests.integration.operator.releases_kit import platform
from tests.registry import Registry, registry_available, start_registry

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "registry") as reg:
        yield reg


async def test_deploy_by_tag_pins_the_digest(
    operator: Operator,  # noqa: F811 (the fixture)
    registry: Registry,
    busybox_image: BuiltImage,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "team/app:v2", fmt="v2s2")
    p = await platform(operator)
    url = f"/api/v1/projects/{p.project['slug']}/releases"
    ref = f"{registry.host}/team/app:v2"
    r = await operator.client.post(url, headers=operator.headers(), json={"image": ref})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["image_ref"] == ref
    assert first["image_digest"].startswith("sha256:")
    image = await operator.client.get(
        f"/api/v1/images/{first['image_id']}", headers=operator.headers()
    )
    assert image.json()["status"] == "ready"
    assert image.json()["digest"] == first["image_digest"]
    # the tag moves: the next deploy gets the new digest, the first release keeps its own
    other = build_image(tmp_path / "v3.tar", env=["PATH=/bin", "APP_GREETING=v3"])
    await asyncio.to_thread(registry.push, other.path, "team/app:v2")
    r = await operator.client.post(url, headers=operator.headers(), json={"image": ref})
    assert r.status_code == 201, r.text
    assert r.json()["image_digest"] == other.digest != first["image_digest"]
    r = await operator.client.get(f"{url}/{first['version']}", headers=operator.headers())
    assert r.status_code == 200, r.text
    assert r.json()["image_digest"] == first["image_digest"]


async def test_refusals_are_problems(
    operator: Operator,  # noqa: F811 (the fixture)
    registry: Registry,
) -> None:
    p = await platform(operator)
    url = f"/api/v1/projects/{p.project['slug']}/releases"
    for image, status, text in (
        (f"{registry.host}/App:v1", 422, "lowercase"),
        (f"{registry.host}/missing:v1", 404, "MANIFEST_UNKNOWN"),
        ("nginx:latest", 422, "no default registry"),
    ):
        r = await operator.client.post(url, headers=operator.headers(), json={"image": image})
        assert text in assert_problem(r, status)["detail"]
    registry.stop()
    r = await operator.client.post(
        url, headers=operator.headers(), json={"image": f"{registry.host}/app:v1"}
    )
    assert "is unreachable" in assert_problem(r, 503)["detail"]
    assert await operator.sql("SELECT count(*) FROM releases") == [(0,)]


async def test_with_a_platform_registry_every_image_has_a_location_nodes_are_granted(
    operator_factory: OperatorFactory,  # noqa: F811 (the fixture)
    registry: Registry,
    busybox_image: BuiltImage,
    tmp_path: Path,
) -> None:
    op = await operator_factory(registry_url=f"http://{registry.host}")
    body = await asyncio.to_thread(busybox_image.path.read_bytes)
    r = await op.client.post(
        "/api/v1/images/import?name=web",
        headers=op.headers() | {"Content-Type": "application/x-tar"},
        content=body,
    )
    assert r.status_code == 201, r.text
    imported = r.json()
    assert imported["location"] == f"{registry.host}/library/web@{busybox_image.digest}"
    other = build_image(tmp_path / "v9.tar", env=["PATH=/bin", "APP_GREETING=v9"])
    await asyncio.to_thread(registry.push, other.path, "team/app:v9")
    p = await platform(op)
    r = await op.client.post(
        f"/api/v1/projects/{p.project['slug']}/releases",
        headers=op.headers(),
        json={"image": f"{registry.host}/team/app:v9"},
    )
    assert r.status_code == 201, r.text
    grant = await op.client.get(f"/api/v1/images/{r.json()['image_id']}/pull", headers=op.headers())
    assert grant.status_code == 200, grant.text
    assert grant.headers["Cache-Control"] == "no-store"
    assert grant.json()["location"] == f"{registry.host}/team/app@{other.digest}"
    assert grant.json()["plain_http"] is True and grant.json()["token"] is None
    missing = await op.client.get(
        "/api/v1/images/00000000-0000-0000-0000-000000000000/pull", headers=op.headers()
    )
    assert_problem(missing, 404)
