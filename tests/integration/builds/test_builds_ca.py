"""The host's CA bundle in RUN steps (``BUILDER_CA_BUNDLE``), for real: a builder process,
real ``buildah bud`` on the suite's busybox image. A RUN step reads the bundle at
``/etc/ssl/certs/zeitwork-ca.pem`` and gets ``PIP_CERT`` (declared with ``ARG``) pointing
at it; no layer of the built image holds the bundle."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.images import BuiltImage
from tests.integration.builds.conftest import Builders, GitServer
from tests.integration.builds.test_builds_git import log_text, queue, wait_build
from tests.integration.operator.conftest import OperatorFactory
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import platform
from zeitwork.operator.principal import Scope

pytestmark = [pytest.mark.slow, pytest.mark.requires_root]


def layer_members(archive: Path) -> dict[str, bytes]:
    """Every regular file of every layer of the OCI archive's image: path -> content."""
    found: dict[str, bytes] = {}
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(outer.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}")
            assert blob is not None
            data = blob.read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                for member in inner.getmembers():
                    handle = inner.extractfile(member) if member.isfile() else None
                    found[member.name] = handle.read() if handle is not None else b""
    return found


async def test_run_steps_trust_the_ca_bundle_and_the_image_does_not_keep_it(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
    tmp_path: Path,
) -> None:
    marker = f"zeitwork-test-ca-{uuid.uuid4().hex}"
    bundle = tmp_path / "host-ca.pem"
    bundle.write_text(f"-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\n")
    op = await operator_factory(build_lease_seconds=10.0)
    p = await platform(op, nodes=1)
    script = (
        "grep -c zeitwork-test-ca /etc/ssl/certs/zeitwork-ca.pem; echo pip_cert=$PIP_CERT; "
        "echo ssl_cert_file=${SSL_CERT_FILE:-unset}"
    )
    git_server.push(
        "ca",
        {
            "Dockerfile": (
                f"FROM oci-archive:{busybox_image.path}\n"
                "ARG PIP_CERT\n"
                "USER root\n"
                f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', script])}\n"
                "COPY index.html /www/index.html\n"
                "USER app\n"
            ),
            "index.html": "<h1>ca</h1>\n",
        },
    )
    async with live_operator(op) as url:
        builders.start(
            url, await op.token(Scope.BUILDER), "builder-ca", BUILDER_CA_BUNDLE=str(bundle)
        )
        build = await wait_build(p, (await queue(p, git_server.url("ca"), ref="main"))["id"])
        logs = await log_text(p, build["id"])
        assert build["state"] == "succeeded", (build, logs, builders.output("builder-ca"))
    lines = logs.splitlines()
    assert "1" in lines  # grep -c: the RUN step read the bundle
    assert "pip_cert=/etc/ssl/certs/zeitwork-ca.pem" in lines  # declared: given
    assert "ssl_cert_file=unset" in lines  # not declared: not given (and no warning for it)
    assert "were not consumed" not in logs
    _image, archive = await op.deps.image_service.archive(build["image_id"])
    members = layer_members(archive)
    assert "www/index.html" in members  # the layers were read
    assert not [name for name, data in members.items() if marker.encode() in data]
    assert members.get("etc/ssl/certs/zeitwork-ca.pem", b"") == b""
    assert marker not in builders.output("builder-ca")
