"""Test helpers for builds: buildah on a private vfs storage, the test busybox base image,
and running a built image to see it answer HTTP (``buildah run``, chroot isolation)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.images import build_image
from zeitwork.builds.base_images import Storage

TEST_BUSYBOX = "localhost/zeitwork-test/busybox:latest"


class Buildah:
    """``buildah`` on one private storage (vfs, chroot isolation): never the host's."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "vfs"}

    def __call__(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            self.storage.argv(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"buildah {args[0]} failed:\n{result.stderr[-3000:]}"
        return result.stdout.strip()

    def bud(
        self,
        context: Path,
        tag: str,
        *,
        dockerfile: Path | None = None,
        build_args: dict[str, str] | None = None,
    ) -> str:
        """``buildah bud``; returns the image id."""
        argv = ["bud", "--isolation", "chroot", "--quiet", "-t", tag]
        if dockerfile is not None:
            argv += ["-f", str(dockerfile)]
        for key, value in (build_args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        return self(*argv, str(context)).splitlines()[-1]

    def config(self, image: str) -> dict[str, object]:
        """The image's OCI config (``Cmd``, ``Entrypoint``, ``User``, ...)."""
        data = json.loads(self("inspect", "--type", "image", image))
        config = data["OCIv1"]["config"]
        assert isinstance(config, dict)
        return config


def load_test_busybox(buildah: Buildah, scratch: Path) -> str:
    """Put the busybox image of ``tests/images.py`` into ``buildah``'s storage as
    ``localhost/zeitwork-test/busybox:latest`` (the dockerfile_app sample's base)."""
    archive = build_image(scratch / "busybox-oci.tar")
    image_id = buildah("pull", "--quiet", f"oci-archive:{archive.path}").splitlines()[-1]
    buildah("tag", image_id, TEST_BUSYBOX)
    return TEST_BUSYBOX


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    buildah: Buildah, image: str, argv: Sequence[str], *, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in a container of ``image`` (host network: chroot isolation), then stop
    it and remove the container."""
    container = buildah("from", "--quiet", image)
    env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
    process = subprocess.Popen(
        buildah.storage.argv("run", "--isolation", "chroot", *env_flags, container, "--", *argv),
        env=buildah.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
        buildah("rm", container)


def wait_for_http(url: str, process: subprocess.Popen[bytes], *, timeout: float = 60) -> str:
    """The body of ``url`` once it answers 200; fails if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"the container exited ({process.returncode}):\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body.decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s: {last}")
