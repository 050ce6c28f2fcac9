"""``zeitwork deploy`` without ``--image`` and ``zeitwork builds``, as real processes against a
live operator with a real builder (buildah) and the release tests' fake agents: a directory
with a Dockerfile is packed, uploaded, built, released and followed to the end; deployed
again unchanged, nothing is uploaded or built; ``--git`` builds a repository;
``builds``, ``builds logs`` and ``builds cancel`` show and act on what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gitserver import GitServer
from tests.images import BuiltImage
from tests.integration.builds.conftest import Builders
from tests.integration.builds.test_builds_git import dockerfile
from tests.integration.operator.conftest import Operator
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import platform
from tests.integration.operator.test_cli_releases import Cli
from zeitwork.operator.principal import Scope

pytestmark = [pytest.mark.slow, pytest.mark.requires_root]


@pytest.fixture
async def cli(operator: Operator, tmp_path: Path, builders: Builders) -> AsyncIterator[Cli]:
    p = await platform(operator, nodes=1)
    async with live_operator(operator) as url:
        builders.start(url, await operator.token(Scope.BUILDER), "cli-builder")
        yield Cli(p=p, url=url, data_dir=tmp_path)


async def test_deploy_a_directory_then_again_unchanged_then_from_git(
    cli: Cli, tmp_path: Path, busybox_image: BuiltImage, git_server: GitServer
) -> None:
    slug = cli.p.project["slug"]
    await cli.p.deploy(replicas=1)  # v1 with quick rollout settings the builds' releases keep
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(dockerfile(busybox_image))
    (app / "index.html").write_text("<h1>from a directory</h1>\n")

    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(app), deadline=240)
    print(f"\n$ zeitwork deploy --app {slug} --dir app\n{out}")  # real output for the docs (-s)
    assert code == 0, (out, err)
    assert "packed" in out and "context uploaded" in out
    assert "STEP 3/5: COPY index.html /www/index.html" in out  # the build's output, streamed
    assert "succeeded in" in out
    assert out.splitlines()[-1].startswith("v2 is the current release ("), out

    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(app), deadline=120)
    print(f"\n$ zeitwork deploy --app {slug} --dir app   # again, unchanged\n{out}")
    assert code == 0, (out, err)
    assert "context unchanged" in out and "unchanged: image reused" in out
    assert "STEP" not in out
    assert out.splitlines()[-1].startswith("v3 is the current release ("), out

    git_server.push("site", {"Dockerfile": dockerfile(busybox_image), "index.html": "git\n"})
    code, out, err = await cli.run(
        "deploy", "--app", slug, "--git", git_server.url("site"), "--ref", "main", deadline=240
    )
    assert code == 0, (out, err)
    assert "commit " in out and out.splitlines()[-1].startswith("v4 is the current release (")

    code, out, err = await cli.run("builds", slug, drive=False)
    print(f"\n$ zeitwork builds {slug}\n{out}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "APP", "ENV", "STATE"]
    assert len(lines) == 4 and all("succeeded" in line for line in lines[1:])
    newest = lines[1].split()[0]
    assert "unchanged (reused" in lines[2]

    code, out, err = await cli.run("builds", "logs", newest, drive=False)
    assert code == 0 and "STEP 1/5" in out, (out, err)
    code, out, err = await cli.run("builds", "logs", newest, "-f", drive=False)
    assert code == 0 and "STEP 1/5" in out, (out, err)
    code, out, err = await cli.run("builds", "cancel", newest, drive=False)
    assert code == 0 and "nothing to cancel" in out, (out, err)


async def test_bad_source_arguments_are_refused_before_anything_happens(
    cli: Cli, tmp_path: Path
) -> None:
    slug = cli.p.project["slug"]
    cases = [
        (("deploy", "--app", slug, "--dir", str(tmp_path / "missing")), "is not a directory"),
        (("deploy", "--app", slug, "--git", "file:///etc"), "http(s)://, git:// or ssh://"),
        (("deploy", "--app", slug, "--image", "x", "--git", "git://h/r"), "drop --image"),
        (("deploy", "--app", slug, "--dir", str(tmp_path), "--env", "A=1"), "go with --image"),
        (("deploy", "--app", slug, "--ref", "main", "--dir", str(tmp_path)), "go with --git"),
    ]
    for args, message in cases:
        code, out, err = await cli.run(*args, drive=False)
        assert code == 2, (args, out, err)
        assert message in err, (args, err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(empty), "--dry-run")
    assert code == 1 and "Dockerfile" in err, (out, err)  # names what was looked for
    assert await cli.p.op.sql("SELECT count(*) FROM builds") == [(0,)]


async def test_a_static_site_without_a_dockerfile_is_detected_built_and_released(
    cli: Cli, tmp_path: Path
) -> None:
    slug = cli.p.project["slug"]
    await cli.p.deploy(replicas=1)
    site = Path(__file__).resolve().parents[2] / "builds_samples" / "static_site"
    copy = tmp_path / "site"  # outside the repository's checkout: packed file by file
    copy.mkdir()
    for item in site.iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(copy), "--dry-run")
    assert code == 0 and "Stack: static" in out, (out, err)
    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(copy), deadline=600)
    assert code == 0, (out, err)
    assert "==> detect: " in out and "base image localhost/zeitwork/static:bookworm" in out, out
    assert out.splitlines()[-1].startswith("v2 is the current release ("), out
    rows = await cli.p.op.sql("SELECT state FROM builds")
    assert rows == [("succeeded",)]


async def test_a_failing_build_exits_1_with_its_step_and_cause(
    cli: Cli, tmp_path: Path, busybox_image: BuiltImage
) -> None:
    slug = cli.p.project["slug"]
    app = tmp_path / "broken"
    app.mkdir()
    (app / "Dockerfile").write_text(f"FROM oci-archive:{busybox_image.path}\nCOPPY a b\n")
    code, out, err = await cli.run("deploy", "--app", slug, "--dir", str(app), deadline=240)
    assert code == 1, (out, err)
    assert "failed at STEP 2/2: COPPY a b: " in err and 'Unknown instruction: "COPPY"' in err, err
    assert "STEP 2/2: COPPY a b" in out  # the output was streamed before
    code, out, err = await cli.run("builds", slug, drive=False)
    assert "failed" in out and "STEP 2/2: COPPY a b" in out, out
