"""The test image factory is deterministic and produces what it claims."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tests.images import APPLETS, BuiltImage, build_image


def test_same_digest_and_bytes_every_time(tmp_path: Path, busybox_image: BuiltImage):
    again = build_image(tmp_path / "again.tar")
    assert again.digest == busybox_image.digest
    assert again.path.read_bytes() == busybox_image.path.read_bytes()


def test_options_change_the_digest(tmp_path: Path, busybox_image: BuiltImage):
    other = build_image(tmp_path / "other.tar", env=("PATH=/bin", "X=1"))
    assert other.digest != busybox_image.digest


def test_archive_shape(busybox_image: BuiltImage):
    with tarfile.open(busybox_image.path) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert {"oci-layout", "index.json"} <= set(names)
    assert index["manifests"][0]["digest"] == busybox_image.digest
    assert busybox_image.config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert "httpd" in APPLETS
