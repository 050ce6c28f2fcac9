"""Validation of an OCI image archive (a tar of an OCI image layout) on disk.

``inspect_archive`` reads the archive once, with constant memory, and checks everything a
node will rely on before anything is kept:

- the tar itself: only regular files and directories, only the names an OCI layout has
  (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``), no absolute or ``..`` paths,
  no duplicates, no links or devices;
- ``oci-layout`` version 1.0.0 and ``index.json`` (schema 2);
- exactly one image manifest: the only one, or the only ``linux/amd64`` one (one level of
  nested image index is followed);
- media types (OCI manifest, OCI config, tar or tar+gzip layers), descriptor sizes;
- every blob's sha256 (referenced or not), every layer's ``diff_id`` (sha256 of the
  uncompressed tar) and that every layer is a tar with safe member names;
- the config: platform ``linux/amd64`` and the run settings (``ImageConfig``).

It is blocking code: callers in ``async`` code run it with ``asyncio.to_thread``.
Everything wrong raises ``zeitwork.core.errors.InvalidInput`` with a message a user can act on.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from zeitwork.core.errors import InvalidInput
from zeitwork.core.files import PendingFile
from zeitwork.images.config import ImageConfig, parse_image_config
from zeitwork.images.digests import is_digest, is_hex
from zeitwork.images.manifests import (
    CONFIG_TYPES,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Compression,
    layer_compression,
)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SUPPORTED_LAYERS = (MEDIA_LAYER_TAR, MEDIA_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_LAYER_GZIP)

PLATFORM = ("linux", "amd64")
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_ARCHIVE_ENTRIES = 10_000
MAX_LAYERS = 127
MAX_LAYER_ENTRIES = 1_000_000
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What a valid archive holds.

    ``digest`` is the selected image manifest's digest (``sha256:...``): the image's identity,
    as registries and ``buildah``/``skopeo`` show it. ``unpacked_size`` is the sum of the
    layers' regular file sizes (an estimate of the unpacked tree before whiteouts).
    """

    digest: str
    config: ImageConfig
    config_digest: str
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    blobs_size: int
    unpacked_size: int


@dataclass(frozen=True, slots=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    platform: tuple[str, str] | None


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\x00" in name or "\\" in name


def _entry_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    return "not a regular file"


def _descriptor(raw: object, where: str) -> _Descriptor:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: descriptor must be an object")
    media_type = raw.get("mediaType")
    digest = raw.get("digest")
    size = raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidInput(f"{where}: descriptor has no mediaType")
    if not is_digest(digest):
        raise InvalidInput(f"{where}: descriptor digest {str(digest)[:80]!r} is not sha256:<hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where}: descriptor size must be a non-negative integer")
    platform = None
    plat = raw.get("platform")
    if isinstance(plat, dict):
        platform = (str(plat.get("os", "")), str(plat.get("architecture", "")))
    return _Descriptor(media_type, str(digest), size, platform)


class _Archive:
    """An opened archive: its member table and verified reads of blobs."""

    def __init__(self, tar: tarfile.TarFile, sink: Path | None) -> None:
        self.tar = tar
        self.sink = sink
        self.files: dict[str, tarfile.TarInfo] = {}
        self.verified: set[str] = set()
        for count, member in enumerate(tar, start=1):
            if count > MAX_ARCHIVE_ENTRIES:
                raise InvalidInput(f"archive has more than {MAX_ARCHIVE_ENTRIES} entries")
            name = _normalise(member.name)
            if _unsafe(member.name):
                raise InvalidInput(f"archive entry {member.name[:200]!r} has an unsafe path")
            if name in ("", "."):
                continue
            if member.isdir():
                if name not in ("blobs", "blobs/sha256"):
                    raise InvalidInput(f"archive has an unexpected directory {name[:200]!r}")
                continue
            if not member.isreg():
                raise InvalidInput(
                    f"archive entry {name[:200]!r} is {_entry_kind(member)}; "
                    "an OCI archive holds only regular files and directories"
                )
            if name in self.files:
                raise InvalidInput(f"archive has the entry {name[:200]!r} twice")
            if name.startswith("blobs/"):
                parts = name.split("/")
                if len(parts) != 3 or parts[1] != "sha256":
                    raise InvalidInput(
                        f"archive entry {name[:200]!r}: only blobs/sha256/<hex> blobs are supported"
                    )
                if not is_hex(parts[2]):
                    raise InvalidInput(f"archive entry {name[:200]!r} is not named by its sha256")
            elif name in ("manifest.json", "repositories"):
                continue  # docker save (Docker 25+) writes an OCI layout plus these
            elif name not in ("oci-layout", "index.json"):
                raise InvalidInput(f"archive has an unexpected entry {name[:200]!r}")
            self.files[name] = member
        if "oci-layout" not in self.files:
            raise InvalidInput("not an OCI image archive: oci-layout is missing")
        if "index.json" not in self.files:
            raise InvalidInput("not an OCI image archive: index.json is missing")

    def _open(self, member: tarfile.TarInfo) -> IO[bytes]:
        handle = self.tar.extractfile(member)
        if handle is None:  # pragma: no cover - regular files always have a handle
            raise InvalidInput(f"cannot read archive entry {member.name[:200]!r}")
        return handle

    def read_json(self, name: str, what: str) -> Any:
        member = self.files[name]
        if member.size > MAX_JSON_BYTES:
            raise InvalidInput(f"{what} is larger than {MAX_JSON_BYTES} bytes")
        data = self._open(member).read()
        if len(data) != member.size:
            raise InvalidInput(f"{what} is truncated")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc

    def blob_member(self, desc: _Descriptor, what: str) -> tarfile.TarInfo:
        name = "blobs/sha256/" + desc.digest.removeprefix("sha256:")
        member = self.files.get(name)
        if member is None:
            raise InvalidInput(f"{what} blob {desc.digest} is missing from the archive")
        if member.size != desc.size:
            raise InvalidInput(
                f"{what} blob {desc.digest} has {member.size} bytes, "
                f"its descriptor says {desc.size}"
            )
        return member

    def _sink_file(self, hexdigest: str) -> IO[bytes] | None:
        if self.sink is None:
            return None
        return (self.sink / "blobs" / "sha256" / hexdigest).open("xb")

    def read_json_blob(self, desc: _Descriptor, what: str) -> Any:
        """Read a small JSON blob, verify its digest, keep a copy when extracting."""
        member = self.blob_member(desc, what)
        if member.size > MAX_JSON_BYTES:
            raise InvalidInput(f"{what} {desc.digest} is larger than {MAX_JSON_BYTES} bytes")
        hexdigest = desc.digest.removeprefix("sha256:")
        if hexdigest not in self.verified:
            data = self._open(member).read()
            if len(data) != member.size:
                raise InvalidInput(f"{what} blob {desc.digest} is truncated")
            if hashlib.sha256(data).hexdigest() != hexdigest:
                raise InvalidInput(f"{what} blob {desc.digest} does not match its sha256")
            sink = self._sink_file(hexdigest)
            if sink is not None:
                with sink:
                    sink.write(data)
            self.verified.add(hexdigest)
        else:
            data = self._open(member).read()
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{what} {desc.digest} is not valid JSON: {exc}") from exc

    def _chunks(self, member: tarfile.TarInfo, hexdigest: str, what: str) -> Iterator[bytes]:
        """Yield a blob's bytes, hashing (and copying to the sink); verify at the end."""
        hasher = hashlib.sha256()
        remaining = member.size
        src = self._open(member)
        sink = self._sink_file(hexdigest)
        try:
            while remaining:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise InvalidInput(f"{what} blob sha256:{hexdigest} is truncated")
                remaining -= len(chunk)
                hasher.update(chunk)
                if sink is not None:
                    sink.write(chunk)
                yield chunk
        finally:
            if sink is not None:
                sink.close()
        if hasher.hexdigest() != hexdigest:
            raise InvalidInput(f"{what} blob sha256:{hexdigest} does not match its sha256")
        self.verified.add(hexdigest)

    def verify_blob(self, name: str, what: str) -> None:
        hexdigest = name.rsplit("/", 1)[1]
        for _chunk in self._chunks(self.files[name], hexdigest, what):
            pass

    def verify_layer(self, desc: _Descriptor, diff_id: str, index: int) -> int:
        """Verify a layer's digest and diff_id and that it is a safe tar; return its size."""
        what = f"layer {index}"
        member = self.blob_member(desc, what)
        hexdigest = desc.digest.removeprefix("sha256:")
        diff_hasher = hashlib.sha256()
        raw = self._chunks(member, hexdigest, what)
        gzipped = layer_compression(desc.media_type, what) is Compression.GZIP
        plain = _gunzip(raw, what) if gzipped else raw
        stream = _HashingReader(plain, diff_hasher)
        total = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as layer:
                for count, entry in enumerate(layer, start=1):
                    if count > MAX_LAYER_ENTRIES:
                        raise InvalidInput(f"{what} has more than {MAX_LAYER_ENTRIES} entries")
                    if _unsafe(entry.name):
                        raise InvalidInput(f"{what} entry {entry.name[:200]!r} has an unsafe path")
                    if entry.islnk() and _unsafe(posixpath.normpath(entry.linkname)):
                        raise InvalidInput(
                            f"{what} hard link {entry.name[:200]!r} points outside the image"
                        )
                    if entry.isreg():
                        total += entry.size
            stream.drain()
        except (InvalidInput, tarfile.TarError) as exc:
            # A corrupt blob is the likelier cause: finish hashing it to say so.
            for _chunk in raw:
                pass
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"{what} ({desc.digest}) is not a valid tar: {exc}") from exc
        if "sha256:" + diff_hasher.hexdigest() != diff_id:
            raise InvalidInput(
                f"{what} ({desc.digest}) does not match its diff_id {diff_id} in the image config"
            )
        return total


def _gunzip(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """Decompress (possibly multi-member) gzip with bounded output per step."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fed = False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                fed = True
                out = decomp.decompress(data, _CHUNK)
                if out:
                    yield out
                if decomp.eof:
                    data = decomp.unused_data
                    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    fed = False
                else:
                    data = decomp.unconsumed_tail
        tail = decomp.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise InvalidInput(f"{what} is not valid gzip: {exc}") from exc
    if fed and not decomp.eof:
        raise InvalidInput(f"{what} is a truncated gzip stream")


class _HashingReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks that hashes what passes through."""

    def __init__(self, chunks: Iterator[bytes], hasher: Any) -> None:
        super().__init__()
        self._chunks = chunks
        self._hasher = hasher
        self._buf = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._done = True
            return False
        self._hasher.update(chunk)
        self._buf = memoryview(chunk)
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf and not self._done:
            self._fill()
        size = min(len(buffer), len(self._buf))
        buffer[:size] = self._buf[:size]
        self._buf = self._buf[size:]
        return size

    def drain(self) -> None:
        """Consume the rest (tar padding after the end marker) so every byte is hashed."""
        self._buf = memoryview(b"")
        while not self._done:
            self._fill()
        self._buf = memoryview(b"")


def _check_manifest_type(desc: _Descriptor, where: str) -> None:
    if desc.media_type not in MANIFEST_TYPES + INDEX_TYPES:
        raise InvalidInput(
            f"{where}: media type {desc.media_type[:100]} is not an image manifest or index"
        )


def _select_manifest(archive: _Archive) -> _Descriptor:
    layout = archive.read_json("oci-layout", "oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise InvalidInput("oci-layout: imageLayoutVersion must be 1.0.0")
    index = archive.read_json("index.json", "index.json")
    where = "index.json"
    for _depth in range(3):
        if not isinstance(index, dict) or index.get("schemaVersion") != 2:
            raise InvalidInput(f"{where}: schemaVersion must be 2")
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise InvalidInput(f"{where}: no manifests")
        descs = [_descriptor(m, where) for m in manifests]
        for desc in descs:
            _check_manifest_type(desc, where)
        if len(descs) == 1:
            chosen = descs[0]
        else:
            matching = [d for d in descs if d.platform == PLATFORM]
            if len(matching) != 1:
                found = ", ".join(sorted({"/".join(d.platform or ("?", "?")) for d in descs}))
                raise InvalidInput(
                    f"{where}: {len(descs)} manifests and {len(matching)} for "
                    f"{'/'.join(PLATFORM)} (platforms: {found}); expected exactly one"
                )
            chosen = matching[0]
        if chosen.media_type in MANIFEST_TYPES:
            return chosen
        where = f"image index {chosen.digest}"
        index = archive.read_json_blob(chosen, "image index")
    raise InvalidInput("index.json: image indexes are nested too deeply")


def _parse_manifest(raw: Any, desc: _Descriptor) -> tuple[_Descriptor, list[_Descriptor]]:
    where = f"manifest {desc.digest}"
    if not isinstance(raw, dict) or raw.get("schemaVersion") != 2:
        raise InvalidInput(f"{where}: schemaVersion must be 2")
    media_type = raw.get("mediaType", MEDIA_MANIFEST)
    if media_type != desc.media_type:
        raise InvalidInput(
            f"{where}: mediaType {str(media_type)[:100]} differs from its descriptor's "
            f"{desc.media_type}"
        )
    config = _descriptor(raw.get("config"), f"{where} config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidInput(f"{where}: config media type {config.media_type} is not supported")
    layers_raw = raw.get("layers")
    if not isinstance(layers_raw, list):
        raise InvalidInput(f"{where}: layers must be a list")
    if len(layers_raw) > MAX_LAYERS:
        raise InvalidInput(f"{where}: more than {MAX_LAYERS} layers")
    layers = [_descriptor(layer, f"{where} layer {i}") for i, layer in enumerate(layers_raw)]
    for i, layer in enumerate(layers):
        layer_compression(layer.media_type, f"{where} layer {i}")
    return config, layers


def _diff_ids(raw: Any, count: int) -> list[str]:
    rootfs = raw.get("rootfs") if isinstance(raw, dict) else None
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidInput("image config: rootfs.type must be 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(is_digest(d) for d in diff_ids):
        raise InvalidInput("image config: rootfs.diff_ids must be a list of sha256 digests")
    if len(diff_ids) != count:
        raise InvalidInput(
            f"image config has {len(diff_ids)} diff_ids but the manifest has {count} layers"
        )
    return [str(d) for d in diff_ids]


def _write_oci_twin(layout: Path, config: _Descriptor, layers: list[_Descriptor]) -> _Descriptor:
    """Write the OCI manifest of a Docker schema 2 image into ``layout`` (``umoci`` unpacks
    only OCI manifests). The blobs are the same; only the media types differ. The image's
    identity stays the Docker manifest's digest: this twin is private to the unpacking."""
    oci_types = {DOCKER_LAYER_GZIP: MEDIA_LAYER_GZIP, DOCKER_LAYER_TAR: MEDIA_LAYER_TAR}
    body = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [
            {
                "mediaType": oci_types.get(d.media_type, d.media_type),
                "digest": d.digest,
                "size": d.size,
            }
            for d in layers
        ],
    }
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    hexdigest = hashlib.sha256(data).hexdigest()
    target = layout / "blobs" / "sha256" / hexdigest
    if not target.exists():
        target.write_bytes(data)
    return _Descriptor(MEDIA_MANIFEST, "sha256:" + hexdigest, len(data), None)


def _check_tar_magic(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(512)
    if not head:
        raise InvalidInput("the image archive is empty")
    if head[:2] == b"\x1f\x8b":
        raise InvalidInput("the image archive is gzip-compressed; send the plain tar")
    if len(head) < 512 or head[257:262] != b"ustar":
        raise InvalidInput("not a tar archive (expected an OCI image archive)")


def inspect_archive(
    path: Path, *, expected_digest: str | None = None, extract_to: Path | None = None
) -> ArchiveInfo:
    """Validate the OCI archive at ``path`` completely; return what it holds.

    With ``expected_digest`` the selected manifest must have exactly that digest
    (``InvalidInput`` "digest mismatch" otherwise). With ``extract_to`` (an empty, existing
    directory) the verified blobs are also written there as an OCI image layout whose
    ``index.json`` names only the selected manifest, tagged ``zeitwork`` (what ``umoci``
    unpacks); the caller removes the directory if this raises.
    """
    _check_tar_magic(path)
    if extract_to is not None:
        (extract_to / "blobs" / "sha256").mkdir(parents=True)
    try:
        with tarfile.open(path, mode="r:") as tar:
            archive = _Archive(tar, extract_to)
            manifest_desc = _select_manifest(archive)
            if expected_digest is not None and manifest_desc.digest != expected_digest:
                raise InvalidInput(
                    f"digest mismatch: the archive holds image {manifest_desc.digest}, "
                    f"expected {expected_digest}"
                )
            manifest = archive.read_json_blob(manifest_desc, "manifest")
            config_desc, layer_descs = _parse_manifest(manifest, manifest_desc)
            raw_config = archive.read_json_blob(config_desc, "config")
            config = parse_image_config(raw_config)
            if (config.os, config.architecture) != PLATFORM:
                raise InvalidInput(
                    f"image is for {config.os}/{config.architecture}; "
                    f"this platform runs {'/'.join(PLATFORM)}"
                )
            diff_ids = _diff_ids(raw_config, len(layer_descs))
            unpacked = 0
            for i, (layer, diff_id) in enumerate(zip(layer_descs, diff_ids, strict=True)):
                if layer.digest.removeprefix("sha256:") in archive.verified:
                    continue  # the same layer twice: checked once
                unpacked += archive.verify_layer(layer, diff_id, i)
            if extract_to is None:
                for name in archive.files:
                    if name.startswith("blobs/") and name.rsplit("/", 1)[1] not in archive.verified:
                        archive.verify_blob(name, "unreferenced")
    except tarfile.TarError as exc:
        raise InvalidInput(f"the image archive is not a valid tar: {exc}") from exc
    except EOFError as exc:
        raise InvalidInput("the image archive is truncated") from exc
    if extract_to is not None:
        (extract_to / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        unpack_desc = manifest_desc
        if manifest_desc.media_type == DOCKER_MANIFEST:
            unpack_desc = _write_oci_twin(extract_to, config_desc, layer_descs)
        entry = {
            "mediaType": MEDIA_MANIFEST,
            "digest": unpack_desc.digest,
            "size": unpack_desc.size,
            "annotations": {"org.opencontainers.image.ref.name": "zeitwork"},
        }
        (extract_to / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": [entry]})
        )
    blobs_size = sum(m.size for n, m in archive.files.items() if n.startswith("blobs/"))
    return ArchiveInfo(
        digest=manifest_desc.digest,
        config=config,
        config_digest=config_desc.digest,
        layers=tuple(d.digest for d in layer_descs),
        diff_ids=tuple(diff_ids),
        blobs_size=blobs_size,
        unpacked_size=unpacked,
    )


def write_oci_archive(dest: Path, *, manifest: bytes, media_type: str, blobs: Path) -> None:
    """Blocking: write an OCI archive at ``dest`` (must not exist) holding one image: the
    ``manifest`` bytes exactly as given (so its digest, the image's identity, is kept) with
    ``media_type`` in ``index.json``, and every file of ``blobs`` (named by sha256 hex).
    The result is what ``inspect_archive`` validates; nothing here is trusted yet."""
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": media_type, "digest": "sha256:" + manifest_hex, "size": len(manifest)}
        ],
    }

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))

    with (
        dest.open("xb") as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes(tar, "index.json", json.dumps(index).encode())
        add_bytes(tar, f"blobs/sha256/{manifest_hex}", manifest)
        for blob in sorted(blobs.iterdir()):
            if not is_hex(blob.name) or blob.name == manifest_hex:
                continue
            info = tarfile.TarInfo(f"blobs/sha256/{blob.name}")
            info.size = blob.stat().st_size
            info.mode = 0o644
            with blob.open("rb") as handle:
                tar.addfile(info, handle)


MAX_DOCKER_MANIFEST_BYTES = 1024 * 1024


def is_docker_archive(path: Path) -> bool:
    """Blocking: whether the tar at ``path`` is a ``docker save`` / ``docker-archive``
    (``manifest.json`` and no ``oci-layout``); ``False`` for anything that is not a tar."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            names = {_normalise(m.name) for m in tar}
    except (tarfile.TarError, EOFError, OSError):
        return False
    return "manifest.json" in names and "oci-layout" not in names


def convert_docker_archive(src: Path, dest: Path, work: Path) -> None:
    """Blocking: turn the docker-archive at ``src`` into an OCI archive at ``dest``.

    A docker-archive has no registry manifest, so one is written: an OCI manifest (compact
    JSON, sorted keys: the same archive content gives the same image digest) naming the
    config and the layers as they are in the archive (tar, or tar+gzip when gzip). ``work``
    (an empty directory) holds the blobs meanwhile. Exactly one image is accepted; symlinked
    layers (``docker save`` links repeated ones) are followed inside the archive only.
    Everything is validated afterwards by ``inspect_archive`` like any upload.
    """
    blobs = work / "blobs"
    blobs.mkdir()
    with tarfile.open(src, mode="r:") as tar:
        members: dict[str, tarfile.TarInfo] = {}
        for member in tar:
            if _unsafe(member.name):
                raise InvalidInput(f"archive entry {member.name[:200]!r} has an unsafe path")
            members[_normalise(member.name)] = member

        def regular(name: str, what: str) -> tarfile.TarInfo:
            seen = 0
            key = posixpath.normpath(_normalise(name))
            member = members.get(key)
            while member is not None and member.issym() and seen < 8:
                seen += 1
                key = posixpath.normpath(posixpath.join(posixpath.dirname(key), member.linkname))
                if _unsafe(key):
                    raise InvalidInput(f"docker-archive: {what} {name[:200]!r} links outside")
                member = members.get(key)
            if member is None or not member.isreg():
                raise InvalidInput(f"docker-archive: {what} {name[:200]!r} is missing")
            return member

        def copy(member: tarfile.TarInfo) -> tuple[str, int, bytes]:
            """Copy an entry into ``blobs`` under its sha256; (digest, size, first bytes)."""
            handle = tar.extractfile(member)
            if handle is None:  # pragma: no cover - regular files always have one
                raise InvalidInput(f"cannot read archive entry {member.name[:200]!r}")
            hasher = hashlib.sha256()
            head = b""
            # named by its digest once copied; not durable: ``work`` is scratch, and the
            # archive made from it is committed durably by the store
            with PendingFile(blobs / "partial", durable=False) as pending:
                with pending.open() as out:
                    while chunk := handle.read(_CHUNK):
                        head = head or chunk[:2]
                        hasher.update(chunk)
                        out.write(chunk)
                digest = hasher.hexdigest()
                pending.path = blobs / digest
            return "sha256:" + digest, member.size, head

        meta = members.get("manifest.json")
        if meta is None or not meta.isreg() or meta.size > MAX_DOCKER_MANIFEST_BYTES:
            raise InvalidInput("docker-archive: manifest.json is missing or too large")
        handle = tar.extractfile(meta)
        try:
            entries = json.loads(handle.read() if handle else b"")
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"docker-archive: manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            count = len(entries) if isinstance(entries, list) else 0
            raise InvalidInput(
                f"docker-archive: manifest.json lists {count} images; expected exactly one "
                "(docker save one image at a time)"
            )
        entry = entries[0]
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise InvalidInput("docker-archive: manifest.json needs Config and Layers")
        if len(layer_names) > MAX_LAYERS:
            raise InvalidInput(f"docker-archive: more than {MAX_LAYERS} layers")
        config_member = regular(config_name, "config")
        if config_member.size > MAX_JSON_BYTES:
            raise InvalidInput(f"docker-archive: the config is larger than {MAX_JSON_BYTES} bytes")
        config_digest, config_size, _head = copy(config_member)
        layers = []
        for name in layer_names:
            if not isinstance(name, str):
                raise InvalidInput("docker-archive: Layers must be file names")
            digest, size, head = copy(regular(name, "layer"))
            media = MEDIA_LAYER_GZIP if head == b"\x1f\x8b" else MEDIA_LAYER_TAR
            layers.append({"mediaType": media, "digest": digest, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    data = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    write_oci_archive(dest, manifest=data, media_type=MEDIA_MANIFEST, blobs=blobs)


@dataclass(frozen=True, slots=True)
class ImageBlobs:
    """An image taken out of an archive to be pushed: the manifest's exact bytes and media
    type, and its blobs (config first, then layers) as verified files."""

    digest: str
    manifest: bytes
    media_type: str
    blobs: tuple[tuple[str, int, Path], ...]


def extract_image_blobs(path: Path, *, digest: str, dest: Path) -> ImageBlobs:
    """Blocking: copy the manifest ``digest``'s config and layers out of the archive at
    ``path`` into ``dest/blobs/sha256/`` (each sha256-verified while copied). For pushing a
    stored archive to a registry; ``inspect_archive`` validated it when it was imported."""
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path, mode="r:") as tar:
            archive = _Archive(tar, dest)
            desc = _select_manifest(archive)
            if desc.digest != digest:
                raise InvalidInput(
                    f"digest mismatch: the archive holds image {desc.digest}, expected {digest}"
                )
            member = archive.blob_member(desc, "manifest")
            data = archive._open(member).read()
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise InvalidInput(f"manifest blob {digest} does not match its sha256")
            try:
                raw = json.loads(data)
            except (UnicodeDecodeError, ValueError) as exc:
                raise InvalidInput(f"manifest {digest} is not valid JSON: {exc}") from exc
            config_desc, layer_descs = _parse_manifest(raw, desc)
            blobs: list[tuple[str, int, Path]] = []
            for i, blob in enumerate([config_desc, *layer_descs]):
                hexdigest = blob.digest.removeprefix("sha256:")
                target = dest / "blobs" / "sha256" / hexdigest
                if hexdigest not in archive.verified:
                    what = "config" if i == 0 else f"layer {i - 1}"
                    for _chunk in archive._chunks(archive.blob_member(blob, what), hexdigest, what):
                        pass
                    blobs.append((blob.digest, blob.size, target))
    except tarfile.TarError as exc:
        raise InvalidInput(f"the image archive is not a valid tar: {exc}") from exc
    return ImageBlobs(digest=digest, manifest=data, media_type=desc.media_type, blobs=tuple(blobs))
