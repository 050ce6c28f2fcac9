"""Real base images and real builds: the python and static bases made with mmdebstrap and
buildah, the sample apps built with ``buildah bud`` from ``detect``'s Dockerfile (or their
own), run with ``buildah run`` and asked over HTTP."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.builds_support.buildah import (
    Buildah,
    free_port,
    load_test_busybox,
    running,
    wait_for_http,
)
from tests.registry import registry_available, start_registry
from zeitwork.builds import base_images
from zeitwork.builds.base_images import Storage
from zeitwork.builds.detect import detect

SAMPLES = Path(__file__).resolve().parents[2] / "builds_samples"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires_root,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed"),
]


@pytest.fixture(scope="session")
def base_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    """One buildah storage for the session, its python and static bases made once."""
    root = tmp_path_factory.mktemp("build-bases") / "storage"
    started = time.monotonic()
    base_images.ensure("python", root)
    print(f"python base image made in {time.monotonic() - started:.1f} s")
    base_images.ensure("static", root)
    yield Storage.at(root)


@pytest.fixture
def buildah(base_storage: Storage) -> Buildah:
    return Buildah(base_storage)


def _run_sample(buildah: Buildah, image: str, tmp_path: Path) -> str:
    config = buildah.config(image)
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]  # type: ignore[misc]
    port = free_port()
    with running(buildah, image, argv, env={"PORT": str(port)}) as process:
        return wait_for_http(f"http://127.0.0.1:{port}/", process)


def test_python_app_without_dockerfile_builds_and_serves(buildah: Buildah, tmp_path: Path) -> None:
    plan = detect(SAMPLES / "python_app")
    assert plan.dockerfile is not None
    dockerfile = tmp_path / "Dockerfile.zeitwork"
    dockerfile.write_text(plan.dockerfile)
    started = time.monotonic()
    buildah.bud(SAMPLES / "python_app", "localhost/test/python-app:1", dockerfile=dockerfile)
    print(f"python sample built in {time.monotonic() - started:.1f} s")
    config = buildah.config("localhost/test/python-app:1")
    assert config["User"] == "65534:65534"
    assert config["Cmd"] == ["/bin/sh", "-c", "exec python3 app.py"]
    body = _run_sample(buildah, "localhost/test/python-app:1", tmp_path)
    assert body == "hello from python_app 1\n"


def test_static_site_builds_on_the_busybox_base(buildah: Buildah, tmp_path: Path) -> None:
    plan = detect(SAMPLES / "static_site")
    assert plan.dockerfile is not None
    dockerfile = tmp_path / "Dockerfile.zeitwork"
    dockerfile.write_text(plan.dockerfile)
    buildah.bud(SAMPLES / "static_site", "localhost/test/static-site:1", dockerfile=dockerfile)
    body = _run_sample(buildah, "localhost/test/static-site:1", tmp_path)
    assert "<h1>hello from static_site</h1>" in body


def test_dockerfile_app_builds_from_the_test_busybox(buildah: Buildah, tmp_path: Path) -> None:
    load_test_busybox(buildah, tmp_path)
    assert detect(SAMPLES / "dockerfile_app").stack == "dockerfile"
    buildah.bud(SAMPLES / "dockerfile_app", "localhost/test/dockerfile-app:1")
    config = buildah.config("localhost/test/dockerfile-app:1")
    argv = [*config["Entrypoint"]]  # type: ignore[misc]
    port = free_port()
    argv[argv.index("8080")] = str(port)
    with running(buildah, "localhost/test/dockerfile-app:1", argv, env={}) as process:
        body = wait_for_http(f"http://127.0.0.1:{port}/", process)
    assert body == "<h1>hello from dockerfile_app</h1>\n"


def test_ensure_is_idempotent_and_builds_once_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "storage"
    calls: list[str] = []
    real_build = base_images.build

    def counting_build(name: str, storage: Storage, **kwargs: object) -> float:
        calls.append(name)
        return real_build(name, storage, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(base_images, "build", counting_build)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(base_images.ensure("static", root)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == ["localhost/zeitwork/static:bookworm"] * 3
    assert calls == ["static"]
    image_id = Buildah(Storage.at(root))("images", "--quiet", "localhost/zeitwork/static:bookworm")
    assert base_images.ensure("static", root) == "localhost/zeitwork/static:bookworm"
    assert calls == ["static"]
    assert Buildah(Storage.at(root))("images", "--quiet", "localhost/zeitwork/static:bookworm") == (
        image_id
    )


def test_a_base_is_copied_into_a_project_storage_and_published(
    base_storage: Storage, tmp_path: Path
) -> None:
    project = Storage.at(tmp_path / "project" / "storage")
    assert not base_images.exists("static", project)
    assert base_images.copy_to("static", base_storage, project) == (
        "localhost/zeitwork/static:bookworm"
    )
    assert base_images.exists("static", project)
    base_images.copy_to("static", base_storage, project)  # there already: nothing to do
    plan = detect(SAMPLES / "static_site")
    assert plan.dockerfile is not None
    dockerfile = tmp_path / "Dockerfile.zeitwork"
    dockerfile.write_text(plan.dockerfile)
    Buildah(project).bud(SAMPLES / "static_site", "localhost/test/site:2", dockerfile=dockerfile)
    if not registry_available():
        pytest.skip("docker-registry or skopeo is not installed")
    with start_registry(tmp_path / "registry") as registry:
        ref = f"{registry.host}/zeitwork/static:bookworm"
        assert base_images.publish("static", base_storage, ref, tls_verify=False) == ref
        elsewhere = Buildah(Storage.at(tmp_path / "elsewhere" / "storage"))
        elsewhere("pull", "--quiet", "--tls-verify=false", f"docker://{ref}")
        assert elsewhere("images", "--quiet", ref)
