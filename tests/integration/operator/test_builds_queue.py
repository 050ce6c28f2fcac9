"""The build queue on a real PostgreSQL through the operator's API: leases (SKIP LOCKED, the
per-project limit, expiry and re-lease), exactly-once finishing, cancel, supersede, logs
(capped), uploaded contexts (sha256, size limit, unsafe members), a success that releases
its image and a commit that built before being skipped."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
import uuid
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import ready_image, ready_node
from zeitwork.operator.principal import Scope

GIT = "git://127.0.0.1:9/app.git"
COMMIT = "a" * 40


async def _project(op: Operator, name: str | None = None) -> dict[str, Any]:
    r = await op.client.post(
        "/api/v1/projects",
        headers=op.headers(),
        json={"name": name or f"app {uuid.uuid4().hex[:6]}"},
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _queue(op: Operator, project: str, **git: Any) -> dict[str, Any]:
    git.setdefault("url", GIT)
    r = await op.client.post(
        f"/api/v1/projects/{project}/builds", headers=op.headers(), json={"git": git}
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _lease(op: Operator, token: str, owner: str = "b1") -> dict[str, Any] | None:
    r = await op.client.post(
        "/api/v1/builder/lease", headers=op.headers(token), json={"owner": owner}
    )
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _finish(op: Operator, token: str, job: dict[str, Any], **body: Any) -> Any:
    body.setdefault("state", "failed")
    body["lease_token"] = job["lease_token"]
    return await op.client.post(
        f"/api/v1/builder/builds/{job['build']['id']}/finish",
        headers=op.headers(token),
        json=body,
    )


async def test_lease_runs_one_build_per_project_and_finishes_exactly_once(
    operator: Operator,
) -> None:
    op = operator
    builder = await op.token(Scope.BUILDER)
    a, b = await _project(op), await _project(op)
    first = await _queue(op, a["slug"], ref="main")
    second = await _queue(op, a["slug"], ref="other")
    third = await _queue(op, b["slug"], ref="main")
    assert first["state"] == "queued"

    job1 = await _lease(op, builder, "b1")
    assert job1 is not None and job1["build"]["id"] == first["id"]
    assert job1["build"]["state"] == "running" and job1["build"]["attempts"] == 1
    # the project's limit is 1: the second builder gets the other project's build
    job2 = await _lease(op, builder, "b2")
    assert job2 is not None and job2["build"]["id"] == third["id"]
    assert await _lease(op, builder, "b3") is None

    # finishing needs the lease: a wrong token is refused, the right one once
    wrong = dict(job1, lease_token=str(uuid.uuid4()))
    r = await _finish(op, builder, wrong, error="x")
    assert r.status_code == 409, r.text
    r = await _finish(op, builder, job1, error="boom", failed_step="STEP 2/3: RUN make")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "failed" and r.json()["failed_step"] == "STEP 2/3: RUN make"
    again = await _finish(op, builder, job1, error="boom")
    assert again.status_code == 200 and again.json()["state"] == "failed"  # repeated: same
    other = await _finish(op, builder, job1, state="cancelled")
    assert other.status_code == 409  # a different finish after the first: refused

    # the project's slot is free again
    job3 = await _lease(op, builder, "b3")
    assert job3 is not None and job3["build"]["id"] == second["id"]
    events = await op.sql("SELECT kind FROM events WHERE kind LIKE 'build.%%' ORDER BY seq")
    kinds = [k for (k,) in events]
    assert kinds.count("build.queued") == 3 and "build.failed" in kinds


async def test_an_admin_token_is_not_needed_and_a_node_token_is_refused(
    operator: Operator,
) -> None:
    op = operator
    _node_id, node_token = await ready_node(op)
    r = await op.client.post(
        "/api/v1/builder/lease", headers=op.headers(node_token), json={"owner": "x"}
    )
    assert r.status_code == 403
    builder = await op.token(Scope.BUILDER)
    r = await op.client.get("/api/v1/builds", headers=op.headers(builder))
    assert r.status_code == 403  # a builder token is not a user's


async def test_expired_lease_is_taken_again_and_the_old_holder_cannot_finish(
    operator_factory: OperatorFactory,
) -> None:
    op = await operator_factory(build_lease_seconds=1.0)
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    build = await _queue(op, p["slug"])
    old = await _lease(op, builder, "dies")
    assert old is not None
    assert await _lease(op, builder, "waits") is None  # the lease is live
    await asyncio.sleep(1.3)
    new = await _lease(op, builder, "takes-over")
    assert new is not None and new["build"]["id"] == build["id"]
    assert new["build"]["attempts"] == 2 and new["lease_token"] != old["lease_token"]
    # the dead builder comes back: its renew, log and finish are all refused
    base = f"/api/v1/builder/builds/{build['id']}"
    r = await op.client.post(
        f"{base}/renew", headers=op.headers(builder), json={"lease_token": old["lease_token"]}
    )
    assert r.status_code == 409
    r = await op.client.post(
        f"{base}/logs",
        headers=op.headers(builder),
        json={"lease_token": old["lease_token"], "data": "late\n"},
    )
    assert r.status_code == 409
    assert (await _finish(op, builder, old, error="late")).status_code == 409
    r = await _finish(op, builder, new, error="done once")
    assert r.status_code == 200 and r.json()["error"] == "done once"
    rows = await op.sql("SELECT state, attempts FROM builds WHERE id = %s", (build["id"],))
    assert rows == [("failed", 2)]


async def test_a_job_lost_three_times_fails_instead_of_running_again(
    operator_factory: OperatorFactory,
) -> None:
    op = await operator_factory(build_lease_seconds=1.0)
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    build = await _queue(op, p["slug"])
    for _attempt in range(3):
        assert await _lease(op, builder) is not None
        await asyncio.sleep(1.2)
    assert await _lease(op, builder) is None
    r = await op.client.get(f"/api/v1/builds/{build['id']}", headers=op.headers())
    assert r.json()["state"] == "failed" and "stopped answering 3 times" in r.json()["error"]


async def test_concurrent_leases_never_take_one_job_twice_or_break_the_limit(
    operator: Operator,
) -> None:
    op = operator
    builder = await op.token(Scope.BUILDER)
    projects = [await _project(op) for _ in range(3)]
    for p in projects:
        for ref in ("a", "b"):
            await _queue(op, p["slug"], ref=ref)
    jobs = await asyncio.gather(*[_lease(op, builder, f"b{i}") for i in range(6)])
    taken = [j for j in jobs if j is not None]
    ids = [j["build"]["id"] for j in taken]
    assert len(ids) == len(set(ids)) == 3  # one per project, none twice
    assert len({j["build"]["project_id"] for j in taken}) == 3


async def test_newer_build_of_the_same_ref_cancels_the_older_queued_one_and_cancel_api(
    operator: Operator,
) -> None:
    op = operator
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    running = await _queue(op, p["slug"], ref="main")
    job = await _lease(op, builder)
    assert job is not None
    older = await _queue(op, p["slug"], ref="main")
    other_ref = await _queue(op, p["slug"], ref="dev")
    newer = await _queue(op, p["slug"], ref="main")
    states = dict(await op.sql("SELECT id::text, state FROM builds"))
    assert states[older["id"]] == "cancelled"
    assert states[running["id"]] == "running"  # running builds are not superseded
    assert states[other_ref["id"]] == "queued" and states[newer["id"]] == "queued"

    r = await op.client.post(f"/api/v1/builds/{newer['id']}/cancel", headers=op.headers())
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    # a running build: cancel is asked, its builder hears it at the next renew
    r = await op.client.post(f"/api/v1/builds/{running['id']}/cancel", headers=op.headers())
    assert r.json()["state"] == "running" and r.json()["cancel_requested"] is True
    r = await op.client.post(
        f"/api/v1/builder/builds/{running['id']}/renew",
        headers=op.headers(builder),
        json={"lease_token": job["lease_token"]},
    )
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    r = await _finish(op, builder, job, state="cancelled")
    assert r.json()["state"] == "cancelled"
    r = await op.client.post(f"/api/v1/builds/{uuid.uuid4()}/cancel", headers=op.headers())
    assert r.status_code == 404


async def test_logs_are_kept_capped_and_followed_until_the_build_ends(
    operator: Operator,
) -> None:
    op = operator
    op.deps.builds._log_cap = 10_000  # a small cap: trimming is quick to see
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    build = await _queue(op, p["slug"])
    job = await _lease(op, builder)
    assert job is not None
    base = f"/api/v1/builder/builds/{build['id']}"
    for i in range(30):
        r = await op.client.post(
            f"{base}/logs",
            headers=op.headers(builder),
            json={"lease_token": job["lease_token"], "data": f"line {i:03d} " + "x" * 990 + "\n"},
        )
        assert r.status_code == 200, r.text
    r = await op.client.get(f"/api/v1/builds/{build['id']}/logs", headers=op.headers())
    chunks = r.json()
    text = "".join(c["data"] for c in chunks)
    assert len(text.encode()) <= 10_000 and "line 029" in text and "line 000" not in text
    got = await op.client.get(f"/api/v1/builds/{build['id']}", headers=op.headers())
    assert got.json()["log_truncated"] is True

    async def finish_soon() -> None:
        await asyncio.sleep(0.5)
        await op.client.post(
            f"{base}/logs",
            headers=op.headers(builder),
            json={"lease_token": job["lease_token"], "data": "last line\n"},
        )
        await _finish(op, builder, job, error="x")

    task = asyncio.create_task(finish_soon())
    seen: list[str] = []
    async with op.client.stream(
        "GET",
        f"/api/v1/builds/{build['id']}/logs",
        params={"follow": "true", "after": str(chunks[-1]["seq"])},
        headers=op.headers(),
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            seen.append(line)
            if line.startswith("data: ") and seen[-2:-1] == ["event: end"]:
                break
    await task
    body = "\n".join(seen)
    assert "last line" in body and "event: end" in body and '"state":"failed"' in body


def _tar(members: dict[str, bytes], *, evil: str | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if evil is not None:
            info = tarfile.TarInfo(evil)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return gzip.compress(raw.getvalue(), mtime=0)


async def test_contexts_are_sha256_addressed_size_limited_and_checked(
    operator_factory: OperatorFactory,
) -> None:
    op = await operator_factory(build_context_max_bytes=64 * 1024)
    good = _tar({"Dockerfile": b"FROM scratch\n"})
    sha = hashlib.sha256(good).hexdigest()
    url = f"/api/v1/build-contexts/{sha}"
    tar = {**op.headers(), "Content-Type": "application/x-tar"}
    assert (await op.client.head(url, headers=op.headers())).status_code == 404
    r = await op.client.put(url, headers=tar, content=good)
    assert r.status_code == 201, r.text
    assert (await op.client.head(url, headers=op.headers())).status_code == 200
    r = await op.client.put(url, headers=tar, content=good)
    assert r.status_code == 200 and r.json()["created"] is False

    wrong = f"/api/v1/build-contexts/{'0' * 64}"
    r = await op.client.put(wrong, headers=tar, content=good)
    assert r.status_code == 422 and "sha256" in r.text

    big = bytes(70 * 1024)
    r = await op.client.put(
        f"/api/v1/build-contexts/{hashlib.sha256(big).hexdigest()}", headers=tar, content=big
    )
    assert r.status_code == 413

    async def chunks() -> Any:  # streamed without a length: still cut at the limit
        for _ in range(20):
            yield bytes(8 * 1024)

    r = await op.client.put(f"/api/v1/build-contexts/{'1' * 64}", headers=tar, content=chunks())
    assert r.status_code == 413

    for evil in ("../escape", "/etc/passwd"):
        bad = _tar({"Dockerfile": b"FROM scratch\n"}, evil=evil)
        r = await op.client.put(
            f"/api/v1/build-contexts/{hashlib.sha256(bad).hexdigest()}", headers=tar, content=bad
        )
        assert r.status_code == 422, (evil, r.text)
    stored = await op.sql("SELECT sha256 FROM build_contexts")
    assert stored == [(sha,)]  # nothing of the refused uploads was kept

    p = await _project(op)
    r = await op.client.post(
        f"/api/v1/projects/{p['slug']}/builds", headers=op.headers(), json={"context": "2" * 64}
    )
    assert r.status_code == 422 and "upload it first" in r.text
    r = await op.client.post(
        f"/api/v1/projects/{p['slug']}/builds", headers=op.headers(), json={"context": sha}
    )
    assert r.status_code == 201 and r.json()["source_kind"] == "dir"
    builder = await op.token(Scope.BUILDER)
    job = await _lease(op, builder)
    assert job is not None
    r = await op.client.get(
        f"/api/v1/builder/builds/{job['build']['id']}/context",
        params={"lease_token": job["lease_token"]},
        headers=op.headers(builder),
    )
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha


async def test_success_releases_the_image_and_the_same_commit_is_not_built_again(
    operator: Operator,
) -> None:
    op = operator
    await ready_node(op)
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    image = await ready_image(op)
    build = await _queue(op, p["slug"], ref="main")
    job = await _lease(op, builder)
    assert job is not None
    base = f"/api/v1/builder/builds/{build['id']}"
    r = await op.client.post(
        f"{base}/resolved",
        headers=op.headers(builder),
        json={"lease_token": job["lease_token"], "git_commit": COMMIT},
    )
    assert r.status_code == 200 and r.json()["reuse_image_id"] is None
    r = await _finish(op, builder, job, state="succeeded", image_id=image, port=8080)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "succeeded" and done["release_id"] is not None
    rel = await op.sql("SELECT image_id::text, description FROM releases")
    assert rel[0][0] == image and COMMIT[:12] in rel[0][1]

    # the same commit again: succeeds at once with the same image, no builder involved
    again = await _queue(op, p["slug"], ref="main", commit=COMMIT)
    assert again["state"] == "succeeded" and again["reused_build_id"] == build["id"]
    assert again["image_id"] == image and again["release_id"] is not None
    assert await _lease(op, builder) is None
    # a ref-only build resolving to that commit is told to reuse the image
    third = await _queue(op, p["slug"], ref="main")
    job3 = await _lease(op, builder)
    assert job3 is not None and job3["build"]["id"] == third["id"]
    r = await op.client.post(
        f"/api/v1/builder/builds/{third['id']}/resolved",
        headers=op.headers(builder),
        json={"lease_token": job3["lease_token"], "git_commit": COMMIT},
    )
    assert r.json()["reuse_image_id"] == image
    kinds = [k for (k,) in await op.sql("SELECT kind FROM events ORDER BY seq")]
    assert kinds.count("build.succeeded") == 2


@pytest.mark.parametrize(
    "body",
    [
        {"git": {"url": "file:///etc"}},
        {"git": {"url": "ext::sh -c touch% /tmp/pwned"}},
        {"git": {"url": "--upload-pack=touch /tmp/x"}},
        {"git": {"url": GIT, "ref": "--force"}},
        {"git": {"url": GIT, "ref": "a..b"}},
        {"git": {"url": GIT, "path": "../up"}},
        {"git": {"url": GIT, "commit": "zz"}},
        {"git": {"url": GIT}, "context": "a" * 64},
        {},
        {"git": {"url": GIT}, "dockerfile": "/etc/Dockerfile"},
    ],
)
async def test_bad_build_requests_are_422(operator: Operator, body: dict[str, Any]) -> None:
    p = await _project(operator)
    r = await operator.client.post(
        f"/api/v1/projects/{p['slug']}/builds", headers=operator.headers(), json=body
    )
    assert r.status_code == 422, (json.dumps(body), r.text)
    assert await operator.sql("SELECT count(*) FROM builds") == [(0,)]


async def test_record_delivery_is_true_once(operator: Operator) -> None:
    p = await _project(operator)
    service = operator.deps.build_service
    assert await service.record_delivery("d-1", uuid.UUID(p["id"])) is True
    assert await service.record_delivery("d-1", uuid.UUID(p["id"])) is False
    assert await service.record_delivery("d-2", None) is True


async def test_a_private_repository_token_is_sealed_and_only_leased_jobs_get_it(
    operator: Operator,
) -> None:
    op = operator
    p = await _project(op)
    url = f"/api/v1/projects/{p['slug']}/git-token"
    r = await op.client.put(url, headers=op.headers(), json={"token": "ghp_secret123"})
    assert r.status_code == 204, r.text
    stored = await op.sql("SELECT git_token FROM projects WHERE id = %s", (p["id"],))
    assert stored[0][0] and "ghp_secret123" not in stored[0][0]  # a ciphertext
    r = await op.client.get(f"/api/v1/projects/{p['slug']}", headers=op.headers())
    assert "ghp_secret123" not in r.text
    await _queue(op, p["slug"])
    builder = await op.token(Scope.BUILDER)
    job = await _lease(op, builder)
    assert job is not None and job["git_token"] == "ghp_secret123"
    r = await op.client.get(f"/api/v1/builds/{job['build']['id']}", headers=op.headers())
    assert "ghp_secret123" not in r.text
    r = await op.client.put(url, headers=op.headers(), json={"token": "bad token"})
    assert r.status_code == 422
    assert (await op.client.delete(url, headers=op.headers())).status_code == 204
    assert await op.sql("SELECT git_token FROM projects WHERE id = %s", (p["id"],)) == [(None,)]


@pytest.mark.parametrize(
    "body", [b"not a tar at all", b"\x1f\x8b\x08\x00garbage", b"\x1f\x8b" + bytes(600), b""]
)
async def test_a_context_that_is_not_an_archive_is_422(operator: Operator, body: bytes) -> None:
    sha = hashlib.sha256(body).hexdigest()
    r = await operator.client.put(
        f"/api/v1/build-contexts/{sha}",
        headers={**operator.headers(), "Content-Type": "application/x-tar"},
        content=body,
    )
    assert r.status_code == 422, r.text
    assert await operator.sql("SELECT count(*) FROM build_contexts") == [(0,)]


async def test_a_release_refused_after_a_success_is_recorded_on_the_build(
    operator: Operator,
) -> None:
    op = operator  # no node at all: the release cannot be placed
    builder = await op.token(Scope.BUILDER)
    p = await _project(op)
    image = await ready_image(op)
    await _queue(op, p["slug"])
    job = await _lease(op, builder)
    assert job is not None
    r = await _finish(op, builder, job, state="succeeded", image_id=image)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "succeeded" and done["release_id"] is None
    assert done["error"].startswith("the image was built but its release was refused: ")
    kinds = [k for (k,) in await op.sql("SELECT kind FROM events ORDER BY seq")]
    assert "build.succeeded" in kinds and "build.release_failed" in kinds
    assert await op.sql("SELECT count(*) FROM releases") == [(0,)]
