"""Image manifests and indexes, OCI and Docker schema 2: parsing, checks, platform choice.

Pure: bytes in, frozen values out, ``InvalidInput`` with a message naming the media type for
anything refused. Accepted:

- manifests: OCI image manifest, Docker image manifest v2 schema 2;
- indexes: OCI image index, Docker manifest list (the platform is chosen with
  ``select_platform``, ``linux/amd64`` by default);
- layers: tar and gzip-compressed tar in either family. zstd layers (OCI ``+zstd``) are
  recognised and refused while no zstd decompressor is available (``ZSTD_SUPPORTED``: the
  standard library of Python 3.11 has none and the project does not depend on one).

Refused with their media type named: Docker schema 1 (signed or not), foreign (Windows) and
non-distributable layers, descriptors with ``urls`` (blobs that live outside the registry),
unknown media types, and anything over the size limits.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from zeitwork.core.errors import InvalidInput
from zeitwork.images.digests import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
NONDISTRIBUTABLE_PREFIX = "application/vnd.oci.image.layer.nondistributable."

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# What a client sends in Accept to get any of them (never schema 1).
ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

ZSTD_SUPPORTED = False
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_LAYERS = 127  # overlayfs stacks at most ~128 lower directories
MAX_INDEX_ENTRIES = 1024


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_TYPES = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_GZIP: Compression.GZIP,
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


LINUX_AMD64 = Platform("linux", "amd64")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None


@dataclass(frozen=True, slots=True)
class Layer:
    descriptor: Descriptor
    compression: Compression

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """One image: its config blob and layers, bottom first. ``digest`` is the sha256 of the
    manifest's bytes exactly as served (the image's identity)."""

    media_type: str
    digest: str
    config: Descriptor
    layers: tuple[Layer, ...]

    @property
    def is_docker(self) -> bool:
        return self.media_type == DOCKER_MANIFEST


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """A multi-platform index (OCI) or manifest list (Docker)."""

    media_type: str
    digest: str
    manifests: tuple[Descriptor, ...]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _platform(raw: object, where: str) -> Platform | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: platform must be an object")
    os_name, arch, variant = raw.get("os"), raw.get("architecture"), raw.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise InvalidInput(f"{where}: platform needs os and architecture strings")
    if variant is not None and not isinstance(variant, str):
        raise InvalidInput(f"{where}: platform variant must be a string")
    return Platform(os_name, arch, variant or None)


def parse_descriptor(raw: object, where: str) -> Descriptor:
    """A content descriptor (``mediaType``, ``digest``, ``size``, optional ``platform``);
    one with ``urls`` (its blob is outside the registry) is refused."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: descriptor must be an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidInput(f"{where}: descriptor has no mediaType")
    if not is_digest(digest):
        raise InvalidInput(f"{where}: descriptor digest {str(digest)[:80]!r} is not sha256:<hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where}: descriptor size must be a non-negative integer")
    if raw.get("urls"):
        raise InvalidInput(
            f"{where}: blob {digest} ({media_type[:100]}) is served from external URLs; "
            "only blobs stored in the registry are supported"
        )
    return Descriptor(media_type, str(digest), size, _platform(raw.get("platform"), where))


def layer_compression(media_type: str, where: str) -> Compression:
    """The compression of a layer media type; refuse what cannot be unpacked here."""
    if media_type == DOCKER_FOREIGN_LAYER or media_type.startswith(NONDISTRIBUTABLE_PREFIX):
        raise InvalidInput(
            f"{where}: media type {media_type} is a foreign (non-distributable) layer; "
            "such layers are not supported"
        )
    compression = _LAYER_TYPES.get(media_type)
    if compression is None:
        raise InvalidInput(
            f"{where}: layer media type {media_type[:100]} is not supported "
            f"(supported: {', '.join(t for t, c in _LAYER_TYPES.items() if _usable(c))})"
        )
    if not _usable(compression):
        raise InvalidInput(
            f"{where}: layer media type {media_type} is not supported: zstd layers need a "
            "zstd decompressor this installation does not have; push the image with gzip layers"
        )
    return compression


def _usable(compression: Compression) -> bool:
    return compression is not Compression.ZSTD or ZSTD_SUPPORTED


def _refuse_schema1(media_type: str, where: str) -> None:
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise InvalidInput(
            f"{where}: media type {media_type} (Docker schema 1) is not supported; "
            "push the image again with a current tool (it writes schema 2 or OCI)"
        )


def _load(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return raw


def parse_manifest(
    data: bytes,
    content_type: str | None = None,
    *,
    where: str = "manifest",
    max_layer_bytes: int | None = None,
) -> ImageManifest | ImageIndex:
    """Parse a manifest or index as a registry serves it.

    ``content_type`` is the response's media type (parameters ignored); when it is missing
    or generic (``application/json``) the body's ``mediaType`` decides, and an OCI body
    without one is told apart by having ``manifests`` (index) or ``config`` (manifest).
    A body whose ``mediaType`` contradicts the header is refused. ``max_layer_bytes``
    refuses any layer whose descriptor is larger.
    """
    header = (content_type or "").split(";")[0].strip().lower()
    if header:
        _refuse_schema1(header, where)
    raw = _load(data, where)
    body_type = raw.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise InvalidInput(f"{where}: mediaType must be a string")
    if body_type:
        _refuse_schema1(body_type, where)
    if raw.get("schemaVersion") == 1:
        _refuse_schema1(DOCKER_SCHEMA1, where)
    if raw.get("schemaVersion") != 2:
        raise InvalidInput(f"{where}: schemaVersion must be 2")
    generic = header in ("", "application/json", "application/octet-stream")
    media_type = body_type or ("" if generic else header)
    if not generic and body_type and header != body_type:
        raise InvalidInput(f"{where}: served as {header[:100]} but its mediaType is {body_type}")
    if not media_type:
        media_type = OCI_INDEX if "manifests" in raw else OCI_MANIFEST
    digest = digest_of(data)
    if media_type in INDEX_TYPES:
        return _index(raw, media_type, digest, where)
    if media_type in MANIFEST_TYPES:
        return _manifest(raw, media_type, digest, where, max_layer_bytes)
    raise InvalidInput(f"{where}: media type {media_type[:100]} is not a supported manifest")


def _index(raw: dict[str, Any], media_type: str, digest: str, where: str) -> ImageIndex:
    entries = raw.get("manifests")
    if not isinstance(entries, list):
        raise InvalidInput(f"{where}: manifests must be a list")
    if len(entries) > MAX_INDEX_ENTRIES:
        raise InvalidInput(f"{where}: more than {MAX_INDEX_ENTRIES} manifests")
    descs = tuple(parse_descriptor(e, f"{where} entry {i}") for i, e in enumerate(entries))
    return ImageIndex(media_type, digest, descs)


def _manifest(
    raw: dict[str, Any], media_type: str, digest: str, where: str, max_layer_bytes: int | None
) -> ImageManifest:
    config = parse_descriptor(raw.get("config"), f"{where} config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidInput(
            f"{where}: config media type {config.media_type[:100]} is not an image config "
            f"(supported: {', '.join(CONFIG_TYPES)})"
        )
    if config.size > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{where}: the config is larger than {MAX_CONFIG_BYTES} bytes")
    entries = raw.get("layers")
    if not isinstance(entries, list):
        raise InvalidInput(f"{where}: layers must be a list")
    if len(entries) > MAX_LAYERS:
        raise InvalidInput(f"{where}: {len(entries)} layers, more than {MAX_LAYERS}")
    layers = []
    for i, entry in enumerate(entries):
        desc = parse_descriptor(entry, f"{where} layer {i}")
        compression = layer_compression(desc.media_type, f"{where} layer {i}")
        if max_layer_bytes is not None and desc.size > max_layer_bytes:
            raise InvalidInput(
                f"{where} layer {i} ({desc.digest}) has {desc.size} bytes, more than the "
                f"limit of {max_layer_bytes}"
            )
        layers.append(Layer(desc, compression))
    return ImageManifest(media_type, digest, config, tuple(layers))


def select_platform(index: ImageIndex, platform: Platform = LINUX_AMD64) -> Descriptor:
    """The one manifest of ``index`` for ``platform``.

    Entries whose media type is not a manifest (attestations are manifests with platform
    ``unknown/unknown``, nested indexes) are never chosen. A variant is compared only when
    ``platform`` names one; several matches pick the first, as Docker does.
    """
    candidates = []
    for desc in index.manifests:
        _refuse_schema1(desc.media_type, "index entry")
        plat = desc.platform
        if desc.media_type not in MANIFEST_TYPES or plat is None:
            continue
        if (plat.os, plat.architecture) != (platform.os, platform.architecture):
            continue
        if platform.variant is not None and plat.variant not in (None, platform.variant):
            continue
        candidates.append(desc)
    if not candidates:
        found = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise InvalidInput(
            f"image index {index.digest} has no manifest for {platform} "
            f"(platforms: {', '.join(found) or 'none named'})"
        )
    return candidates[0]


def to_oci_manifest(manifest: ImageManifest) -> bytes:
    """The OCI manifest of the same image (what ``umoci`` unpacks): Docker schema 2 media
    types map one to one onto OCI's, the blobs are unchanged. Its digest differs from the
    Docker manifest's, so it is only ever a private unpacking aid, never an identity."""
    oci_layers = {
        DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
        DOCKER_LAYER_TAR: OCI_LAYER_TAR,
    }
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": manifest.config.digest,
            "size": manifest.config.size,
        },
        "layers": [
            {
                "mediaType": oci_layers.get(
                    layer.descriptor.media_type, layer.descriptor.media_type
                ),
                "digest": layer.digest,
                "size": layer.size,
            }
            for layer in manifest.layers
        ],
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
