"""Per-project registry credentials through the operator's API: stored sealed, never shown
nor logged, used when a release of that project names an image in that registry. A real
docker-registry with htpasswd auth, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.images import BuiltImage
from tests.integration.operator.conftest import (  # noqa: F401 (fixtures used by name)
    Operator,
    operator,
    operator_factory,
)
from tests.integration.operator.fleet import assert_problem
from tests.integration.operator.releases_kit import platform
from tests.registry import BasicAuth, Registry, registry_available, start_registry

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)

SECRET = "pr1vate-pa55"


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "private", auth=BasicAuth("deployer", SECRET)) as reg:
        yield reg


async def test_a_private_image_deploys_with_the_projects_credentials(
    operator: Operator,  # noqa: F811 (the fixture)
    private: Registry,
    busybox_image: BuiltImage,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await asyncio.to_thread(private.push, busybox_image.path, "team/app:v1")
    p = await platform(operator)
    slug = p.project["slug"]
    releases = f"/api/v1/projects/{slug}/releases"
    ref = f"{private.host}/team/app:v1"
    refused = await operator.client.post(releases, headers=operator.headers(), json={"image": ref})
    assert "requires credentials" in assert_problem(refused, 401)["detail"]

    creds = f"/api/v1/projects/{slug}/registry-credentials"
    host = private.host
    r = await operator.client.put(
        f"{creds}/{host}",
        headers=operator.headers(),
        json={"username": "deployer", "password": "wrong"},
    )
    assert r.status_code == 201, r.text
    wrong = await operator.client.post(releases, headers=operator.headers(), json={"image": ref})
    assert "refused the credentials" in assert_problem(wrong, 401)["detail"]
    r = await operator.client.put(
        f"{creds}/{host}",
        headers=operator.headers(),
        json={"username": "deployer", "password": SECRET},
    )
    assert r.status_code == 200, r.text  # replaced
    assert SECRET not in r.text and "password" not in r.json()
    deployed = await operator.client.post(releases, headers=operator.headers(), json={"image": ref})
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["image_digest"] == busybox_image.digest

    listed = await operator.client.get(creds, headers=operator.headers())
    assert [(c["registry"], c["username"]) for c in listed.json()] == [(host, "deployer")]
    assert SECRET not in listed.text
    stored = await operator.sql("SELECT password_sealed FROM registry_credentials")
    assert stored and SECRET not in stored[0][0]  # sealed at rest
    assert SECRET not in capsys.readouterr().out  # nor logged

    r = await operator.client.delete(f"{creds}/{host}", headers=operator.headers())
    assert r.status_code == 204
    assert_problem(await operator.client.delete(f"{creds}/{host}", headers=operator.headers()), 404)


async def test_bad_input_is_a_problem(operator: Operator) -> None:  # noqa: F811
    p = await platform(operator)
    creds = f"/api/v1/projects/{p.project['slug']}/registry-credentials"
    bad_host = await operator.client.put(
        f"{creds}/bad_host!", headers=operator.headers(), json={"username": "u", "password": "p"}
    )
    assert "registry" in assert_problem(bad_host, 422)["detail"]
    empty = await operator.client.put(
        f"{creds}/reg.example.com", headers=operator.headers(), json={"username": "u"}
    )
    assert_problem(empty, 422)
    missing = await operator.client.get(
        f"/api/v1/projects/{uuid.uuid4()}/registry-credentials", headers=operator.headers()
    )
    assert_problem(missing, 404)


def test_the_cli_reads_the_password_from_stdin_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from zeitwork.cli import registry_cmd
    from zeitwork.cli.main import app

    sent: list[tuple[str, str, dict[str, str]]] = []

    class Response:
        def json(self) -> dict[str, str]:
            return {"registry": "ghcr.io", "username": "me"}

    class Client:
        async def _request(self, method: str, path: str, **kwargs: dict[str, str]) -> Response:
            sent.append((method, path, kwargs["json"]))
            return Response()

    def run(action):  # type: ignore[no-untyped-def]
        return asyncio.run(action(Client()))

    monkeypatch.setattr(registry_cmd, "run_with_client", run)
    runner = CliRunner()
    result = runner.invoke(app, ["registry", "login", "myapp", "ghcr.io", "-u", "me"])
    assert result.exit_code == 2 and "--password-stdin" in result.output
    result = runner.invoke(
        app,
        ["registry", "login", "myapp", "ghcr.io", "-u", "me", "--password-stdin"],
        input="t0ken-value\n",
    )
    assert result.exit_code == 0, result.output
    assert "t0ken-value" not in result.output
    assert sent == [
        (
            "PUT",
            "/api/v1/projects/myapp/registry-credentials/ghcr.io",
            {"username": "me", "password": "t0ken-value"},
        )
    ]
