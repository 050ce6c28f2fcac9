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
