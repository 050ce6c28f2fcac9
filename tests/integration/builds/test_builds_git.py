"""Builds from git, for real: a bare repository served by ``git daemon``, ``zeitwork builder``
processes running real ``buildah bud`` (vfs, chroot) on a Dockerfile app whose base is the
suite's busybox image (an oci-archive, nothing downloaded), the image uploaded to a live
operator and released in the project's environment; the release's instance runs (the
fake agents of the release tests report it running and healthy).

Faults: a builder SIGKILLed mid-build loses its lease and the job completes once on
another; a ref that does not exist and a Dockerfile syntax error fail with a readable
cause and register no image and no release.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gitserver import GitServer
from tests.images import BuiltImage
from tests.integration.builds.conftest import Builders, with_group
from tests.integration.operator.conftest import OperatorFactory
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import Platform, platform
from zeitwork.operator.principal import Scope

pytestmark = [pytest.mark.slow, pytest.mark.requires_root]

BUILD_WAIT = 240.0  # a loaded 2-core machine: vfs copies every layer


def dockerfile(base: BuiltImage, *, extra: str = "") -> str:
    return (
        f"FROM oci-archive:{base.path}\n"
        "USER root\n"
        "COPY index.html /www/index.html\n"
        f"{extra}"
        "USER app\n"
        "EXPOSE 8080\n"
    )


async def queue(p: Platform, url: str, **git: Any) -> dict[str, Any]:
    r = await p.op.client.post(
        f"/api/v1/projects/{p.project['slug']}/builds",
        headers=p.op.headers(),
        json={"git": {"url": url, **git}, "port": 8080},
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def wait_build(
    p: Platform, build_id: str, *, states: tuple[str, ...] = ("succeeded", "failed", "cancelled")
) -> dict[str, Any]:
    deadline = time.monotonic() + BUILD_WAIT
    while True:
        r = await p.op.client.get(f"/api/v1/builds/{build_id}", headers=p.op.headers())
        assert r.status_code == 200, r.text
        build: dict[str, Any] = r.json()
        settled = build["state"] != "succeeded" or build["release_id"] or build["error"]
        if build["state"] in states and settled:  # a success's release comes just after
            return build
        assert time.monotonic() < deadline, f"build still {build['state']}: {build}"
        await asyncio.sleep(0.2)


async def log_text(p: Platform, build_id: str) -> str:
    r = await p.op.client.get(f"/api/v1/builds/{build_id}/logs", headers=p.op.headers())
    return "".join(c["data"] for c in r.json())


def push_sleeper(git_server: GitServer, base: BuiltImage, name: str, seconds: int) -> None:
    """Repository ``name``: the app with a ``RUN sleep`` step (a build to catch running)."""
    sleep = f'RUN ["/bin/busybox", "sleep", "{seconds}"]\n'
    git_server.push(
        name,
        {"Dockerfile": dockerfile(base, extra=sleep), "index.html": f"<h1>{name}</h1>\n"},
    )


async def sleeping(p: Platform, build_id: str, times: int, output: Callable[[], str]) -> None:
    """Until the build's log has shown its ``sleep`` step ``times`` times (once per attempt
    that reached it); ``output``: what to show if it never does."""
    deadline = time.monotonic() + BUILD_WAIT
    while (await log_text(p, build_id)).count("sleep") < times:
        assert time.monotonic() < deadline, output()
        await asyncio.sleep(0.2)


async def released_and_running(p: Platform, release_id: str) -> None:
    async def done() -> bool:
        rows = await p.op.sql(
            "SELECT r.state, count(i.id) FILTER (WHERE i.state = 'running' AND i.serving) "
            "FROM releases r LEFT JOIN instances i ON i.release_id = r.id "
            "WHERE r.id = %s GROUP BY r.state",
            (release_id,),
        )
        return bool(rows) and rows[0][0] == "active" and int(rows[0][1]) >= 1

    await p.converge(done, max_steps=20, seconds=30)  # min_healthy_time: 5 s by default


async def test_a_git_push_is_built_with_buildah_and_released(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
) -> None:
    op = await operator_factory(build_lease_seconds=10.0)
    p = await platform(op, nodes=1)
    commit = git_server.push(
        "app", {"Dockerfile": dockerfile(busybox_image), "index.html": "<h1>v1</h1>\n"}
    )
    async with live_operator(op) as url:
        builders.start(url, await op.token(Scope.BUILDER), "builder-a")
        started = time.monotonic()
        build = await queue(p, git_server.url("app"), ref="main")
        done = await wait_build(p, build["id"])
        first_seconds = time.monotonic() - started
        logs = await log_text(p, build["id"])
        assert done["state"] == "succeeded", (done, logs, builders.output("builder-a"))
        assert done["git_commit"] == commit and done["release_id"] is not None
        assert "STEP 3/5: COPY index.html /www/index.html" in logs
        assert done["builder_version"].startswith("zeitwork-builder/")
        image = await op.sql("SELECT status, config FROM images WHERE id = %s", (done["image_id"],))
        assert image[0][0] == "ready"
        assert len(image[0][1].get("layers", [])) != 1 or image[0][1]  # a real OCI config
        await released_and_running(p, done["release_id"])

        # no change: the same commit is not built again (skipped, same image)
        started = time.monotonic()
        again = await queue(p, git_server.url("app"), ref="main")
        again = await wait_build(p, again["id"])
        unchanged_seconds = time.monotonic() - started
        assert again["state"] == "succeeded" and again["image_id"] == done["image_id"]
        assert again["reused_build_id"] == build["id"]

        # a one-line change: built again, the base and unchanged layers from the cache
        git_server.push(
            "app",
            {
                "Dockerfile": dockerfile(busybox_image),
                "index.html": "<h1>v2</h1>\n",
            },
        )
        started = time.monotonic()
        third = await queue(p, git_server.url("app"), ref="main")
        third = await wait_build(p, third["id"])
        change_seconds = time.monotonic() - started
        assert third["state"] == "succeeded" and third["image_id"] != done["image_id"]
        third_logs = await log_text(p, third["id"])
        assert "Using cache" in third_logs or "--> Using cache" in third_logs, third_logs
        await released_and_running(p, third["release_id"])
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{builders.ports['builder-a']}"
        ) as probe:
            health = await probe.get("/health")
            assert health.status_code == 200 and health.json()["service"] == "builder"
            metrics = (await probe.get("/metrics")).text
            assert 'zeitwork_builder_builds_total{state="succeeded"} 3.0' in metrics, metrics
            assert "zeitwork_builder_build_seconds_count 3.0" in metrics
        print(  # the figures for the report (pytest -s)
            f"\nBUILD FIGURES first={first_seconds:.2f}s unchanged={unchanged_seconds:.2f}s "
            f"one-line-change={change_seconds:.2f}s"
        )


async def test_a_builder_killed_mid_build_loses_the_job_and_it_completes_once(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
) -> None:
    op = await operator_factory(build_lease_seconds=3.0)
    p = await platform(op, nodes=1)
    push_sleeper(git_server, busybox_image, "slow", 6)
    async with live_operator(op) as url:
        token = await op.token(Scope.BUILDER)
        first = builders.start(url, token, "doomed")
        build = await queue(p, git_server.url("slow"), ref="main")
        await sleeping(p, build["id"], 1, lambda: builders.output("doomed"))
        with_group(first, 9)  # SIGKILL the builder mid-build (its buildah is killed with it)
        first.wait(10)
        rows = await op.sql("SELECT state, lease_owner FROM builds WHERE id = %s", (build["id"],))
        assert rows == [("running", "doomed")]  # nobody finished it

        builders.start(url, token, "survivor")
        done = await wait_build(p, build["id"])
        assert done["state"] == "succeeded", (done, builders.output("survivor"))
        assert done["attempts"] == 2 and done["lease_owner"] == "survivor"
        releases = await op.sql("SELECT count(*) FROM releases")
        assert releases == [(1,)]
        kinds = [k for (k,) in await op.sql("SELECT kind FROM events WHERE kind LIKE 'build.%%'")]
        assert kinds.count("build.succeeded") == 1 and kinds.count("build.started") == 2


async def test_a_missing_ref_and_a_dockerfile_syntax_error_fail_readably(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
) -> None:
    op = await operator_factory()
    p = await platform(op, nodes=1)
    broken = f"FROM oci-archive:{busybox_image.path}\nCOPPY index.html /www/\n"
    git_server.push("broken", {"Dockerfile": broken, "index.html": "x\n"})
    images_before = await op.sql("SELECT count(*) FROM images")
    async with live_operator(op) as url:
        builders.start(url, await op.token(Scope.BUILDER), "builder-f")
        missing = await queue(p, git_server.url("broken"), ref="no-such-branch")
        failed = await wait_build(p, missing["id"])
        assert failed["state"] == "failed" and failed["failed_step"] == "fetch source"
        assert "'no-such-branch' does not exist" in failed["error"], failed

        syntax = await queue(p, git_server.url("broken"), ref="main")
        bad = await wait_build(p, syntax["id"])
        assert bad["state"] == "failed", bad
        assert "COPPY" in bad["error"].upper(), bad
        assert bad["failed_step"] and bad["image_id"] is None and bad["release_id"] is None
        print(f"\nSYNTAX ERROR step={bad['failed_step']!r} error={bad['error']!r}")

        gone = await queue(p, "git://127.0.0.1:9/nothing.git", ref="main")
        unreachable = await wait_build(p, gone["id"])
        assert unreachable["state"] == "failed"
        assert "cannot read the repository" in unreachable["error"]
    assert await op.sql("SELECT count(*) FROM images") == images_before
    assert await op.sql("SELECT count(*) FROM releases") == [(0,)]
    kinds = [k for (k,) in await op.sql("SELECT kind FROM events WHERE kind = 'build.failed'")]
    assert len(kinds) == 3


def _processes_using(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


async def test_sigterm_hands_the_job_back_and_cancel_stops_a_running_build(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
) -> None:
    op = await operator_factory(build_lease_seconds=3.0)
    p = await platform(op, nodes=1)
    push_sleeper(git_server, busybox_image, "long", 60)
    async with live_operator(op) as url:
        token = await op.token(Scope.BUILDER)
        first = builders.start(url, token, "leaving", BUILDER_DRAIN_TIMEOUT="0")
        build = await queue(p, git_server.url("long"), ref="main")
        await sleeping(p, build["id"], 1, lambda: builders.output("leaving"))
        with_group(first, 15)  # SIGTERM: no drain time, so the job is handed back at once
        assert await asyncio.to_thread(first.wait, 30) == 0, builders.output("leaving")
        rows = await op.sql(
            "SELECT state, lease_owner, attempts FROM builds WHERE id = %s", (build["id"],)
        )
        assert rows == [("queued", None, 0)], rows
        assert _processes_using(build["project_id"]) == []  # its buildah was killed too

        builders.start(url, token, "staying")
        await sleeping(p, build["id"], 2, lambda: builders.output("staying"))
        r = await op.client.post(f"/api/v1/builds/{build['id']}/cancel", headers=op.headers())
        assert r.json()["cancel_requested"] is True
        done = await wait_build(p, build["id"])
        assert done["state"] == "cancelled", done
        assert done["image_id"] is None and done["release_id"] is None
        assert done["finished_at"] is not None
        deadline = time.monotonic() + 10
        while _processes_using(build["project_id"]):
            assert time.monotonic() < deadline, _processes_using(build["project_id"])
            await asyncio.sleep(0.2)


async def test_a_build_over_its_memory_limit_fails_and_says_so(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
) -> None:
    if not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.skip("needs the cgroup v1 memory controller (or systemd) for build limits")
    op = await operator_factory()
    p = await platform(op, nodes=1)
    hog = 'RUN ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=600M", "count=1"]\n'
    git_server.push(
        "hog", {"Dockerfile": dockerfile(busybox_image, extra=hog), "index.html": "x\n"}
    )
    async with live_operator(op) as url:
        builders.start(url, await op.token(Scope.BUILDER), "limited", BUILDER_MEMORY_MAX="256M")
        build = await queue(p, git_server.url("hog"), ref="main")
        failed = await wait_build(p, build["id"])
    assert failed["state"] == "failed", failed
    assert "ran out of memory (BUILDER_MEMORY_MAX=256M)" in failed["error"], failed
    assert failed["failed_step"].startswith("STEP 4/6: RUN"), failed
    assert not any(Path("/sys/fs/cgroup/memory").rglob(f"zeitwork-build-{build['id']}"))
