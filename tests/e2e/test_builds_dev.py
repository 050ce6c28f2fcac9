"""Builds from source on the whole platform (``zeitwork dev`` as a real subprocess: operator,
node agent with runc, load balancer, edge proxy, builder with buildah), one platform for the
module:

- ``zeitwork deploy`` in a directory with a Dockerfile builds it, releases it and the new
  version answers through the edge; a one-line change deployed the same way replaces it;
- a ``git push`` to a real ``git daemon`` and its GitHub push event, signed as GitHub signs
  it, build the pushed commit and roll it out while a steady client through the edge sees
  no failed request; a wrong or missing signature is 401 and a replayed delivery is a
  duplicate, and neither queues anything;
- ``zeitwork deploy`` in a Python app directory without a Dockerfile (``requirements.txt``,
  ``http.server``, a ``Procfile`` ``web:`` line) is detected (``--dry-run`` prints the
  plan), built on the python base made on first use with mmdebstrap, and served through
  the edge.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.e2e.dev_platform import Platform, cli, dev_platform, until
from tests.e2e.releases_kit import Load, answers_only, deploy, only_version_running, settled
from tests.gitserver import GitServer, git_daemon
from tests.images import INDEX_HTML, BuiltImage

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

SAMPLES = Path(__file__).resolve().parents[1] / "builds_samples"
BUILD_WAIT = 300.0  # a loaded 2-core machine: vfs copies every layer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    """One ``zeitwork dev`` for the module's tests (each its own app). No vCPU is reserved
    for the host: the three apps (one at the default 1 vCPU) and a rolling surge fit the
    2-core node."""
    root = tmp_path_factory.mktemp("dev")
    async with dev_platform(root, env_extra={"ZEITWORK_RESERVED_VCPU": "0"}) as made:

        async def started() -> bool:
            return "Zeitwork is running" in made.output()

        await until(started, within=180, what="the platform to start", platform=made)
        assert "dev: buildah is not installed" not in made.output()
        yield made


@pytest.fixture(scope="module")
def git_repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """``git daemon`` on a free 127.0.0.1 port serving bare repositories (the module's)."""
    with git_daemon(tmp_path_factory.mktemp("repos")) as server:
        yield server


def _cli_env(p: Platform) -> dict[str, str]:
    return {**os.environ, "OPERATOR_URL": p.url("operator"), "ZEITWORK_DATA_DIR": str(p.data_dir)}


def _dockerfile(base: BuiltImage) -> str:
    return (
        f"FROM oci-archive:{base.path}\n"
        "USER root\n"
        "COPY index.html /www/index.html\n"
        "USER app\n"
        "EXPOSE 8080\n"
    )


def _app(directory: Path, base: BuiltImage, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "Dockerfile").write_text(_dockerfile(base))
    (directory / "index.html").write_text(text)


async def _answer(p: Platform, domain: str) -> str | None:
    """The body ``GET /`` answers through the edge for ``domain``, None unless 200."""
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=5) as web:
            answer = await web.get(p.url("http") + "/", headers={"Host": domain})
            return answer.text if answer.status_code == 200 else None
    return None


async def _import_base(env: dict[str, str], image: BuiltImage) -> str:
    imported = await cli(env, "images", "import", str(image.path), "--name", "base")
    return imported.splitlines()[1].split()[0]


async def test_deploy_in_a_directory_is_built_and_served_through_the_edge(
    dev: Platform, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    p = dev
    app = f"built-{uuid.uuid4().hex[:6]}"
    domain = f"{app}.test"
    source = tmp_path / "src"
    env = _cli_env(p)

    async def serves(text: str) -> bool:
        return await _answer(p, domain) == text

    # v1 from the image with small resources: a build's release keeps the current settings
    # (the dev node has room for a rolling surge of 0.25 vCPU, not of the default 1 vCPU)
    image_id = await _import_base(env, busybox_image)
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
    out = await cli(env, "deploy", "--app", app, "--dir", str(source), within=BUILD_WAIT)
    assert "context uploaded" in out and "STEP 3/5: COPY" in out, out
    assert "v2 is the current release" in out, out
    await until(lambda: serves("<h1>built v2</h1>\n"), within=30, what="v2", platform=p)

    _app(source, busybox_image, "<h1>built v3</h1>\n")
    out = await cli(env, "deploy", "--app", app, "--dir", str(source), within=BUILD_WAIT)
    assert "Using cache" in out and "v3 is the current release" in out, out
    await until(lambda: serves("<h1>built v3</h1>\n"), within=30, what="v3", platform=p)

    listed = await cli(env, "builds", app)
    assert len([line for line in listed.splitlines() if "succeeded" in line]) == 2, listed


# ------------------------------------------------------------------------ GitHub webhook


def _github_signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` as GitHub computes it: HMAC-SHA256 of the raw body, in hex,
    keyed with the webhook's secret (written out here, not taken from zeitwork)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _push_event(clone_url: str, repository: str, commit: str) -> bytes:
    """A GitHub ``push`` payload (the fields GitHub sends that a build could read) for a
    new ``main`` branch whose head is ``commit``."""
    payload: dict[str, Any] = {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": commit,
        "created": True,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.example/{repository}/commit/{commit[:12]}",
        "commits": [{"id": commit, "message": "v2", "distinct": True}],
        "head_commit": {"id": commit, "message": "v2", "distinct": True},
        "repository": {
            "id": 1,
            "name": repository.rsplit("/", 1)[-1],
            "full_name": repository,
            "private": False,
            "clone_url": clone_url,
            "default_branch": "main",
        },
        "pusher": {"name": "test", "email": "test@example.invalid"},
        "sender": {"login": "test", "id": 1, "type": "User"},
    }
    return json.dumps(payload).encode()


def _webhook_settings(shown: str) -> tuple[str, str]:
    """(payload URL, secret) from ``zeitwork apps webhook APP``."""
    fields = {}
    for line in shown.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip()] = value.strip()
    return fields["Payload URL"], fields["Secret"]


@pytest.mark.timeout(600)  # the build's wait, on a loaded machine
async def test_a_signed_github_push_is_built_and_rolled_out_through_the_edge(
    dev: Platform, busybox_image: BuiltImage, git_repos: GitServer
) -> None:
    p = dev
    app = f"hook-{uuid.uuid4().hex[:6]}"
    domain = f"{app}.test"
    env = _cli_env(p)
    v1_text = INDEX_HTML.decode().strip()
    image_id = await _import_base(env, busybox_image)
    headers = {"Authorization": f"Bearer {p.token}"}
    async with (
        httpx.AsyncClient(base_url=p.url("operator"), headers=headers, timeout=30) as api,
        httpx.AsyncClient(timeout=30) as github,
    ):
        created = await api.post("/api/v1/projects", json={"name": app, "slug": app})
        assert created.status_code == 201, created.text
        bound = await api.post(
            "/api/v1/domains",
            json={"name": domain, "project_id": created.json()["id"], "environment": "production"},
        )
        assert bound.status_code == 201, bound.text
        # v1 from the image: 0.25 vCPU, an HTTP health check and a quick rolling strategy,
        # the settings the build's release keeps
        await deploy(api, app, image_id)
        assert (await settled(api, app, 1))["state"] == "active"

        async def serves_v1() -> bool:
            return (await _answer(p, domain) or "").strip() == v1_text

        await until(serves_v1, within=30, what="v1 through the edge", platform=p)

        shown = await cli(env, "apps", "webhook", app)
        url, secret = _webhook_settings(shown)
        assert url == f"{p.url('operator')}/api/v1/webhooks/github/{app}", shown
        assert len(secret) == 64 and "Pushes to 'main' are built and released" in shown, shown

        async def deliver(
            event: str, body: bytes, delivery: str, signature: str | None
        ) -> httpx.Response:
            sent = {
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/e2e",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-GitHub-Hook-ID": "1",
            }
            if signature is not None:
                sent["X-Hub-Signature-256"] = signature
            return await github.post(url, content=body, headers=sent)

        async def builds() -> list[dict[str, Any]]:
            listed = await api.get("/api/v1/builds", params={"project": app})
            assert listed.status_code == 200, listed.text
            found: list[dict[str, Any]] = listed.json()
            return found

        ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        pong = await deliver("ping", ping, str(uuid.uuid4()), _github_signature(secret, ping))
        assert pong.status_code == 200 and pong.json()["status"] == "pong", pong.text

        load = Load(p.ports["http"], domain, rate=20)
        load.start()
        try:
            pushed = time.monotonic()
            commit = git_repos.push(
                app, {"Dockerfile": _dockerfile(busybox_image), "index.html": "pushed v2\n"}
            )
            body = _push_event(git_repos.url(app), f"example/{app}", commit)
            delivery = str(uuid.uuid4())
            # refused: signed with another secret, a signature of other bytes, none at all
            # (with the delivery id of the good one below: a refused delivery records nothing)
            for bad in (
                _github_signature(secret + "x", body),
                _github_signature(secret, body + b" "),
                None,
            ):
                refused = await deliver("push", body, delivery, bad)
                assert refused.status_code == 401, refused.text
            assert await builds() == []

            queued = await deliver("push", body, delivery, _github_signature(secret, body))
            assert queued.status_code == 202, queued.text
            answer = queued.json()
            assert answer["status"] == "queued" and answer["commit"] == commit, answer
            replayed = await deliver("push", body, delivery, _github_signature(secret, body))
            assert replayed.status_code == 202, replayed.text
            assert replayed.json()["status"] == "duplicate", replayed.text
            assert [b["id"] for b in await builds()] == [answer["build_id"]]

            async def serves_v2() -> bool:
                return any(version == "pushed v2" for _at, _how, version in load.answers)

            await until(serves_v2, within=BUILD_WAIT, what="v2 through the edge", platform=p)
            serving_seconds = time.monotonic() - pushed
            v2 = await settled(api, app, 2, timeout=120)
            assert v2["state"] == "active", v2
            await only_version_running(api, app, 2, 1, timeout=60)
            await answers_only(load, "pushed v2")  # and no failure since the load began
        finally:
            await load.stop()
        assert load.failures == [], load.failures[:20]
        served = {version for _at, _how, version in load.answers}
        assert served == {v1_text, "pushed v2"}, served
        assert len(load.answers) > 0

        (build,) = await builds()
        assert build["state"] == "succeeded" and build["reason"] == "webhook", build
        assert build["git_commit"] == commit and build["release_id"] == v2["id"], build
        assert build["created_by"] == f"github delivery {delivery}", build
    print(  # the figures for the report (pytest -s)
        f"\nWEBHOOK FIGURES push->v2 via edge={serving_seconds:.1f}s "
        f"requests={len(load.answers)} failed={len(load.failures)} "
        f"build={build['durations']}"
    )


# ------------------------------------------------------------------ Python, no Dockerfile


@pytest.mark.timeout(1500)  # the python base is made on first use (mmdebstrap)
async def test_a_python_app_without_a_dockerfile_is_detected_built_and_served(
    dev: Platform, tmp_path: Path
) -> None:
    p = dev
    app = f"py-{uuid.uuid4().hex[:6]}"
    domain = f"{app}.test"
    env = _cli_env(p)
    source = tmp_path / "pyapp"  # outside the repository's checkout: packed file by file
    shutil.copytree(SAMPLES / "python_app", source)

    plan = await cli(env, "deploy", "--app", app, "--dir", str(source), "--dry-run")
    print(f"\n$ zeitwork deploy --dry-run\n{plan}")  # real output for the docs (-s)
    lines = plan.splitlines()
    assert lines[0] == "Stack: python", plan
    for expected in (
        "  - requirements.txt found: Python",
        "  - dependencies from requirements.txt (pip install -r)",
        "  - start from Procfile web: line",
        "Start command: python3 app.py",
        "Base image (BASE_IMAGE): localhost/zeitwork/python:bookworm",
        "Dockerfile (generated):",
        "  RUN pip install -r requirements.txt",
        "  USER 65534:65534",
        '  CMD ["/bin/sh", "-c", "exec python3 app.py"]',
    ):
        assert expected in lines, (expected, plan)
    headers = {"Authorization": f"Bearer {p.token}"}
    async with httpx.AsyncClient(base_url=p.url("operator"), headers=headers) as api:
        listed = await api.get("/api/v1/projects")
        assert listed.status_code == 200, listed.text
        assert app not in [project["slug"] for project in listed.json()]  # a dry run makes nothing

    started = time.monotonic()
    out = await cli(
        env, "deploy", "--app", app, "--dir", str(source), "--domain", domain, within=1200
    )
    deployed_seconds = time.monotonic() - started
    print(f"\n$ zeitwork deploy --app {app} --domain {domain}\n{out}")
    assert "==> detect: start from Procfile web: line" in out, out
    assert "base image localhost/zeitwork/python:bookworm (" in out, out
    assert "RUN pip install -r requirements.txt" in out, out
    assert out.splitlines()[-1].startswith("v1 is the current release ("), out

    async def serves() -> bool:
        body = await _answer(p, domain)
        return body == "hello from python_app 1\n"

    await until(serves, within=60, what="the python app through the edge", platform=p)
    served_seconds = time.monotonic() - started
    body = await _answer(p, domain)
    made = [line for line in out.splitlines() if "base image localhost/zeitwork/python" in line]
    print(
        f"\nPYTHON FIGURES first deploy={deployed_seconds:.1f}s served={served_seconds:.1f}s "
        f"{made} answer={body!r}"
    )
