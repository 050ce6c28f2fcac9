"""Build real, runnable OCI image archives for tests, in pure Python (tarfile, gzip, json).

The default image is a tiny HTTP app: Debian's static busybox (package ``busybox-static``)
serving ``/www`` with ``busybox httpd`` on port 8080 as user ``app`` (uid 1000):
``GET /`` answers ``index.html`` and ``GET /health`` answers ``ok``. Output is
deterministic (fixed mtimes, owners, gzip header), so the digest is stable across runs.

Use ``build_image(dest)`` for an archive file, or ``image_layout()`` for the layout's files
as bytes (to corrupt them in tests) and ``write_archive(dest, files)`` to tar them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MTIME = 1_700_000_000
APP_PORT = 8080
APP_UID = 1000

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/www:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n"
INDEX_HTML = b"<h1>zeitwork test app</h1>\n"
APPLETS = ("sh", "httpd", "cat", "echo", "env", "id", "ls", "sleep", "true", "false")


def busybox_path() -> Path:
    """The static busybox binary (Debian ``busybox-static``); skip-worthy if missing."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("busybox")
    if found is None:
        raise FileNotFoundError("busybox is not installed (apt-get install busybox-static)")
    return Path(found)


@dataclass(frozen=True)
class Entry:
    """One layer entry: a file (``data``), a directory (``data is None``) or a symlink."""

    path: str
    data: bytes | None = None
    mode: int = 0o644
    symlink: str | None = None
    uid: int = 0
    gid: int = 0


def app_entries() -> list[Entry]:
    """The default app's files: busybox, applet links, passwd/group, /www."""
    entries = [
        Entry("bin", mode=0o755),
        Entry("bin/busybox", busybox_path().read_bytes(), mode=0o755),
        *(Entry(f"bin/{name}", symlink="busybox", mode=0o777) for name in APPLETS),
        Entry("etc", mode=0o755),
        Entry("etc/passwd", PASSWD.encode()),
        Entry("etc/group", GROUP.encode()),
        Entry("tmp", mode=0o1777),
        Entry("www", mode=0o755),
        Entry("www/index.html", INDEX_HTML),
        Entry("www/health", b"ok\n"),
    ]
    return entries


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed, deterministic layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime = MTIME
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            if entry.symlink is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.symlink
                tar.addfile(info)
            elif entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Layout:
    """An OCI layout in memory: archive member name -> bytes, plus the interesting parts."""

    files: dict[str, bytes]
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    manifest: dict[str, Any]
    config: dict[str, Any]
    index: dict[str, Any] = field(default_factory=dict)

    def blob_name(self, digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    def put_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.files[self.blob_name(digest)] = data
        return digest


def image_layout(
    *,
    layers: Sequence[Sequence[Entry]] | None = None,
    entrypoint: Sequence[str] | None = ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"),
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = ("PATH=/bin", "APP_GREETING=hello"),
    user: str = "app",
    working_dir: str = "/www",
    ports: Sequence[str] = ("8080/tcp",),
    architecture: str = "amd64",
    compress: bool = True,
    labels: Mapping[str, str] | None = None,
) -> Layout:
    """Build the files of an OCI image layout (default: the busybox HTTP app)."""
    layer_list = [app_entries()] if layers is None else [list(layer) for layer in layers]
    files: dict[str, bytes] = {}
    layer_descs = []
    diff_ids = []
    for entries in layer_list:
        plain = layer_tar(entries)
        blob = gzip_bytes(plain) if compress else plain
        digest = sha256(blob)
        files["blobs/sha256/" + digest.removeprefix("sha256:")] = blob
        layer_descs.append(
            {
                "mediaType": MEDIA_LAYER_GZIP if compress else MEDIA_LAYER_TAR,
                "digest": digest,
                "size": len(blob),
            }
        )
        diff_ids.append(sha256(plain))
    run: dict[str, Any] = {"Env": list(env), "WorkingDir": working_dir, "User": user}
    if entrypoint is not None:
        run["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        run["Cmd"] = list(cmd)
    if ports:
        run["ExposedPorts"] = {p: {} for p in ports}
    if labels:
        run["Labels"] = dict(labels)
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "tests/images.py"} for _ in layer_list],
    }
    config_blob = _json(config)
    config_digest = sha256(config_blob)
    files["blobs/sha256/" + config_digest.removeprefix("sha256:")] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": layer_descs,
    }
    manifest_blob = _json(manifest)
    manifest_digest = sha256(manifest_blob)
    files["blobs/sha256/" + manifest_digest.removeprefix("sha256:")] = manifest_blob
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest_blob)}
        ],
    }
    files["index.json"] = _json(index)
    files["oci-layout"] = _json({"imageLayoutVersion": "1.0.0"})
    return Layout(
        files=files,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=[d["digest"] for d in layer_descs],
        manifest=manifest,
        config=config,
        index=index,
    )


def write_archive(
    dest: Path, files: Mapping[str, bytes], *, extra: Iterable[tarfile.TarInfo] = ()
) -> Path:
    """Tar ``files`` (name -> bytes) as ``buildah push oci-archive:`` does, deterministically.

    ``extra`` adds raw tar headers (symlinks, devices, ...) for corruption tests.
    """
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs/", "blobs/sha256/"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, MTIME
            tar.addfile(info, io.BytesIO(files[name]))
        for info in extra:
            tar.addfile(info)
    return dest


@dataclass(frozen=True)
class BuiltImage:
    """An OCI archive on disk and what a correct importer must report for it."""

    path: Path
    digest: str
    size: int
    config: Mapping[str, Any]


def build_image(dest: Path, **options: Any) -> BuiltImage:
    """Write an OCI archive to ``dest`` (options as ``image_layout``); return its facts."""
    layout = image_layout(**options)
    write_archive(dest, layout.files)
    return BuiltImage(
        path=dest, digest=layout.manifest_digest, size=dest.stat().st_size, config=layout.config
    )


def script_image(dest: Path, script: str) -> BuiltImage:
    """The default image running ``/bin/sh -c script`` (no ``cmd``) instead of its httpd."""
    return build_image(dest, entrypoint=["/bin/sh", "-c", script], cmd=None)


class ArchiveFiles:
    """Stands in for the operator's image download on a node (``download_image`` of
    ``OperatorClient``): serves the archives it was offered from their files."""

    def __init__(self) -> None:
        self.files: dict[uuid.UUID, Path] = {}

    def offer(self, image: BuiltImage) -> dict[str, Any]:
        """Serve ``image`` under a new id; returns the ``image`` of an assignment naming it."""
        image_id = uuid.uuid4()
        self.files[image_id] = image.path
        return {"id": image_id, "name": "app", "digest": image.digest, "size": image.size}

    async def download_image(
        self, image_id: uuid.UUID, dest: Path, *, expected_digest: str | None = None
    ) -> str:
        shutil.copyfile(self.files[image_id], dest)
        return expected_digest or ""
