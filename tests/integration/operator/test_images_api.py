"""``/api/v1/images``: import a real OCI archive (201, then 200 for the same digest),
corrupt and truncated archives (4xx, nothing left), size limit (413), download by node
tokens with the digest header, delete (409 while used), and 422 for builds."""

from __future__ import annotations

from pathlib import Path

from tests.images import BuiltImage
from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import assert_problem, instance_body, ready_node

API = "/api/v1/images"
TAR = {"Content-Type": "application/x-tar"}


def stored_files(op: Operator) -> list[Path]:
    root = op.deps.settings.data_dir / "images"
    return sorted(p for p in root.rglob("*") if p.is_file())


async def import_image(op: Operator, image: BuiltImage, name: str = "web") -> dict[str, object]:
    r = await op.client.post(
        f"{API}/import?name={name}", headers=op.headers() | TAR, content=image.path.read_bytes()
    )
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


async def test_import_then_reimport_then_download(
    operator: Operator, busybox_image: BuiltImage
) -> None:
    h = operator.headers() | TAR
    r = await operator.client.post(
        f"{API}/import?name=web", headers=h, content=busybox_image.path.read_bytes()
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["name"], out["status"], out["digest"]) == ("web", "ready", busybox_image.digest)
    assert out["size"] == busybox_image.size
    config = out["config"]
    assert config["entrypoint"][:2] == ["/bin/busybox", "httpd"]
    assert config["user"] == "app"
    assert config["exposed_ports"] == ["8080/tcp"]
    assert set(config) == {"entrypoint", "cmd", "env", "working_dir", "user", "exposed_ports"}
    # the same image again (any name): the existing one, 200
    r = await operator.client.post(
        f"{API}/import?name=other", headers=h, content=busybox_image.path.read_bytes()
    )
    assert r.status_code == 200
    assert r.json()["id"] == out["id"]
    assert r.json()["name"] == "web"
    assert len(stored_files(operator)) == 1
    listed = (await operator.client.get(API, headers=operator.headers())).json()
    assert [i["id"] for i in listed] == [out["id"]]
    r = await operator.client.get(f"{API}/{out['id']}", headers=operator.headers())
    assert r.json()["digest"] == busybox_image.digest
    # a node with an instance of it downloads it, byte for byte, with the digest announced
    node, token = await ready_node(operator)
    r = await operator.client.post(
        "/api/v1/instances",
        headers=operator.headers(),
        json=instance_body(str(out["id"]), node_id=node),
    )
    assert r.status_code == 201, r.text
    r = await operator.client.get(f"{API}/{out['id']}/archive", headers=operator.headers(token))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["digest"] == busybox_image.digest
    assert r.content == busybox_image.path.read_bytes()


async def test_corrupt_and_truncated_archives_leave_nothing(
    operator: Operator, busybox_image: BuiltImage
) -> None:
    h = operator.headers() | TAR
    data = busybox_image.path.read_bytes()
    for body in (b"not a tar at all" * 100, data[: len(data) // 2], b""):
        r = await operator.client.post(f"{API}/import?name=bad", headers=h, content=body)
        assert r.status_code in (400, 422), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0xFF
    r = await operator.client.post(f"{API}/import?name=bad", headers=h, content=bytes(flipped))
    assert r.status_code in (400, 422), r.text
    assert stored_files(operator) == []
    assert await operator.sql("SELECT count(*) FROM images") == [(0,)]


async def test_import_limits_and_input_errors(
    operator_factory: OperatorFactory, busybox_image: BuiltImage
) -> None:
    op = await operator_factory(image_max_bytes=1024 * 1024)
    data = busybox_image.path.read_bytes()
    big = data + b"\0" * (1024 * 1024)
    r = await op.client.post(f"{API}/import?name=big", headers=op.headers() | TAR, content=big)
    assert_problem(r, 413)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield b"\0" * (512 * 1024)

    r = await op.client.post(f"{API}/import?name=big", headers=op.headers() | TAR, content=chunks())
    assert_problem(r, 413)
    assert stored_files(op) == []
    r = await op.client.post(f"{API}/import", headers=op.headers() | TAR, content=data)
    assert_problem(r, 422)  # name is required
    r = await op.client.post(
        f"{API}/import?name=x",
        headers=op.headers() | {"Content-Type": "application/json"},
        content=b"{}",
    )
    assert_problem(r, 415)
    r = await op.client.post(f"{API}/import?name=x", headers=TAR, content=data)
    assert_problem(r, 401)
    _node, token = await ready_node(op)
    r = await op.client.post(f"{API}/import?name=x", headers=op.headers(token) | TAR, content=data)
    assert_problem(r, 403)


async def test_build_path_is_422_pointing_at_the_import(operator: Operator) -> None:
    r = await operator.client.post(
        API, headers=operator.headers(), json={"github_repo": "zeitwork/example"}
    )
    body = assert_problem(r, 422)
    assert "builds from source are not available yet" in body["detail"]
    assert "POST /api/v1/images/import" in body["detail"]
    assert_problem(await operator.client.post(API, headers=operator.headers(), json={}), 422)


async def test_node_tokens_download_only_their_instances_images(
    operator: Operator, busybox_image: BuiltImage
) -> None:
    image = await import_image(operator, busybox_image)
    url = f"{API}/{image['id']}/archive"
    mine, mine_token = await ready_node(operator)
    _other, other_token = await ready_node(operator)
    # no instance of the image anywhere: node tokens are refused, the admin is not
    detail = assert_problem(
        await operator.client.get(url, headers=operator.headers(mine_token)), 403
    )
    assert "assigned to its node" in detail["detail"]
    assert (await operator.client.get(url, headers=operator.headers())).status_code == 200
    r = await operator.client.post(
        "/api/v1/instances",
        headers=operator.headers(),
        json=instance_body(str(image["id"]), node_id=mine),
    )
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    assert (await operator.client.get(url, headers=operator.headers(mine_token))).status_code == 200
    assert_problem(await operator.client.get(url, headers=operator.headers(other_token)), 403)
    # an image that does not exist: 403 for a node token (nothing learned), 404 for the admin
    missing = f"{API}/00000000-0000-0000-0000-000000000001/archive"
    assert_problem(await operator.client.get(missing, headers=operator.headers(mine_token)), 403)
    assert_problem(await operator.client.get(missing, headers=operator.headers()), 404)
    r = await operator.client.put(
        f"/api/v1/instances/{iid}/state", headers=operator.headers(), json={"state": "terminated"}
    )
    assert r.status_code == 200, r.text
    assert_problem(await operator.client.get(url, headers=operator.headers(mine_token)), 403)


async def test_delete_refused_while_used_then_removes_archive(
    operator: Operator, busybox_image: BuiltImage
) -> None:
    image = await import_image(operator, busybox_image)
    node, token = await ready_node(operator)
    r = await operator.client.post(
        "/api/v1/instances", headers=operator.headers(), json=instance_body(str(image["id"]))
    )
    iid = r.json()["id"]
    r = await operator.client.delete(f"{API}/{image['id']}", headers=operator.headers())
    assert "used by 1 instance" in assert_problem(r, 409)["detail"]
    r = await operator.client.put(
        f"/api/v1/instances/{iid}/state", headers=operator.headers(), json={"state": "terminated"}
    )
    assert r.status_code == 200
    r = await operator.client.delete(f"{API}/{image['id']}", headers=operator.headers())
    assert r.status_code == 204
    assert stored_files(operator) == []
    assert_problem(
        await operator.client.get(f"{API}/{image['id']}", headers=operator.headers()), 404
    )
    r = await operator.client.get(f"{API}/{image['id']}/archive", headers=operator.headers())
    assert_problem(r, 404)
    # the node's instance of it is terminated: its token may no longer download it
    r = await operator.client.get(f"{API}/{image['id']}/archive", headers=operator.headers(token))
    assert_problem(r, 403)
    assert_problem(
        await operator.client.delete(f"{API}/{image['id']}", headers=operator.headers()), 404
    )
    del node
