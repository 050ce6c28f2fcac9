"""Builds that push straight to the platform registry: with ``ZEITWORK_REGISTRY_URL`` (a
real docker-registry, anonymous as ``zeitwork dev`` runs it) the builder runs ``buildah
push docker://<registry>/library/<project>:build-<id>`` and tells the operator the digest;
the operator reads the manifest there and catalogues the image by reference. A rebuild
after a one-line change sends only the changed layer; a registry that is down at push time
falls back to the archive upload. The route's refusals (stale lease 409, a reference
outside the project's repository 422, a manifest not in the registry 404) with no builder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage
from tests.integration.builds.conftest import Builders, GitServer
from tests.integration.builds.test_builds_git import (
    dockerfile,
    log_text,
    queue,
    released_and_running,
    wait_build,
)
from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import platform
from tests.registry import Registry, registry_available, start_registry
from zeitwork.operator.principal import Scope

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)

# a layer of its own below the changing one: a rebuild must not send it again
LAYERED = 'RUN ["/bin/busybox", "dd", "if=/dev/urandom", "of=/blob", "bs=1024", "count=512"]\n'


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "platform") as reg:
        yield reg


def app_files(base: BuiltImage, text: str) -> dict[str, str]:
    return {
        "Dockerfile": dockerfile(base).replace("COPY index.html", LAYERED + "COPY index.html"),
        "index.html": text,
    }


async def layers_of(op: Operator, image_id: str) -> list[str]:
    rows = await op.sql("SELECT config->'layers' FROM images WHERE id = %s", (image_id,))
    return [layer["digest"] for layer in rows[0][0]]


def link_times(registry: Registry, repository: str, digests: list[str]) -> dict[str, int]:
    """When each layer blob was last linked into ``repository``: the registry rewrites the
    link at every upload of the blob, and a blob found there (``HEAD``) is not uploaded."""
    base = registry.root / "docker/registry/v2/repositories" / repository / "_layers/sha256"
    return {d: (base / d.removeprefix("sha256:") / "link").stat().st_mtime_ns for d in digests}


@pytest.mark.slow
@pytest.mark.requires_root
async def test_a_build_is_pushed_to_the_registry_and_a_rebuild_sends_only_its_change(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
    registry: Registry,
) -> None:
    op = await operator_factory(build_lease_seconds=10.0, registry_url=f"http://{registry.host}")
    p = await platform(op, nodes=1)
    slug = p.project["slug"]
    git_server.push("app", app_files(busybox_image, "<h1>v1</h1>\n"))
    async with live_operator(op) as url:
        builders.start(url, await op.token(Scope.BUILDER), "builder-r")
        first = await wait_build(p, (await queue(p, git_server.url("app"), ref="main"))["id"])
        logs = await log_text(p, first["id"])
        assert first["state"] == "succeeded", (first, logs, builders.output("builder-r"))
        repository = f"{registry.host}/library/{slug}"
        assert f"pushing the image to {repository}:build-{first['id']}" in logs
        assert "uploading the image" not in logs and "oci-archive" not in logs.split("COMMIT")[1]
        assert "push" in first["durations"] and "upload" not in first["durations"]
        rows = await op.sql(
            "SELECT name, digest, config->>'registry_location' FROM images WHERE id = %s",
            (first["image_id"],),
        )
        name, digest, location = rows[0]
        assert location == f"{repository}@{digest}"
        assert name == f"{repository}:build-{first['id']}@{digest}"
        assert registry.blob_path(digest).is_file()  # the manifest, by digest, in the registry
        await released_and_running(p, first["release_id"])
        version = await op.sql("SELECT version FROM releases WHERE id = %s", (first["release_id"],))
        assert first["release_version"] == version[0][0]  # BuildOut names the release's version
        first_layers = await layers_of(op, first["image_id"])
        assert len(first_layers) >= 3  # the base's, the RUN's and the COPY's
        before = link_times(registry, f"library/{slug}", first_layers)

        # a one-line change: only the COPY layer is new; the others are known to be there
        git_server.push("app", app_files(busybox_image, "<h1>v2</h1>\n"))
        second = await wait_build(p, (await queue(p, git_server.url("app"), ref="main"))["id"])
        logs = await log_text(p, second["id"])
        assert second["state"] == "succeeded", (second, logs)
        assert second["image_id"] != first["image_id"]
        second_layers = await layers_of(op, second["image_id"])
        kept = [d for d in second_layers if d in before]
        assert len(kept) == len(second_layers) - 1, (first_layers, second_layers)
        assert link_times(registry, f"library/{slug}", kept) == {d: before[d] for d in kept}
        await released_and_running(p, second["release_id"])
        print(f"\nPUSH FIGURES first={first['durations']} change={second['durations']}")

        # the registry is down when the builder pushes: the archive goes to the operator
        registry.stop()
        git_server.push("app", app_files(busybox_image, "<h1>v3</h1>\n"))
        third = await wait_build(p, (await queue(p, git_server.url("app"), ref="main"))["id"])
        logs = await log_text(p, third["id"])
        assert third["state"] == "succeeded", (third, logs)
        assert "uploading the archive to the operator instead" in logs
        assert "uploading the image" in logs and "upload" in third["durations"]


async def test_the_pushed_route_refuses_a_stale_lease_a_foreign_reference_and_a_missing_image(
    operator_factory: OperatorFactory, registry: Registry
) -> None:
    op = await operator_factory(registry_url=f"http://{registry.host}")
    r = await op.client.post("/api/v1/projects", headers=op.headers(), json={"name": "pushy"})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    r = await op.client.post(
        f"/api/v1/projects/{slug}/builds",
        headers=op.headers(),
        json={"git": {"url": "git://127.0.0.1:1/none.git", "ref": "main"}},
    )
    assert r.status_code == 201, r.text
    builder = op.headers(await op.token(Scope.BUILDER))
    r = await op.client.post("/api/v1/builder/lease", headers=builder, json={"owner": "t"})
    assert r.status_code == 200, r.text
    job = r.json()
    build_id, token = job["build"]["id"], job["lease_token"]
    repository = f"{registry.host}/library/{slug}"
    assert job["push_to"] == {
        "repository": repository,
        "tag": f"build-{build_id}",
        "plain_http": True,
    }
    digest = "sha256:" + "ab" * 32
    route = f"/api/v1/builder/builds/{build_id}/pushed"

    async def post(reference: str, lease: str = token) -> tuple[int, str]:
        answer = await op.client.post(
            route, headers=builder, json={"lease_token": lease, "reference": reference}
        )
        return answer.status_code, answer.text

    mine = f"{repository}:build-{build_id}@{digest}"
    assert (await post(mine, str(uuid.uuid4())))[0] == 409
    for foreign in (
        f"{registry.host}/library/other:build-{build_id}@{digest}",  # another repository
        f"{repository}:latest@{digest}",  # another tag
        f"{repository}:build-{build_id}",  # no digest
        f"127.0.0.2:5000/library/{slug}:build-{build_id}@{digest}",  # another registry
        "not a reference",
    ):
        status, text = await post(foreign)
        assert status == 422, (foreign, text)
    status, text = await post(mine)  # the right name, but nothing was pushed there
    assert status == 404, text
    assert await op.sql("SELECT count(*) FROM images WHERE name LIKE %s", (f"%{slug}%",)) == [(0,)]
    # a registry that wants credentials: no push_to (the operator's account stays its own)
    other = await operator_factory(
        registry_url=f"http://{registry.host}",
        registry_username="pusher",
        registry_password="secret",
    )
    assert (
        await other.client.post(
            f"/api/v1/builder/builds/{build_id}/pushed",
            headers=other.headers(await other.token(Scope.BUILDER)),
            json={"lease_token": token, "reference": mine},
        )
    ).status_code == 422
