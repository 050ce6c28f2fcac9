"""OCI images: validated import into a content-addressed store (operator side) and a
reference-counted, LRU-evicted cache of images ready to run (node side), each layer
unpacked once into a layer store shared by the images holding it. See ``docs/images.md``.

This package does file and subprocess I/O only (no HTTP, no database): the operator feeds
``import_archive`` the request body; the agent gives ``ImageCache.ensure`` a coroutine that
downloads the archive to a path.
"""

from __future__ import annotations

from zeitwork.images.cache import (
    CacheEntry,
    Fetch,
    ImageCache,
    LayerBlob,
    Pull,
    PulledImage,
    UnpackedImage,
)
from zeitwork.images.config import ImageConfig, parse_image_config
from zeitwork.images.digests import is_digest, parse_digest
from zeitwork.images.layers import LayerStore
from zeitwork.images.layout import ArchiveInfo, inspect_archive
from zeitwork.images.process import DEFAULT_PATH, ProcessConfig, build_process
from zeitwork.images.store import ArchiveStore, StoredImage, import_archive
from zeitwork.images.users import ResolvedUser, resolve_user

__all__ = [
    "DEFAULT_PATH",
    "ArchiveInfo",
    "ArchiveStore",
    "CacheEntry",
    "Fetch",
    "ImageCache",
    "ImageConfig",
    "LayerBlob",
    "LayerStore",
    "ProcessConfig",
    "Pull",
    "PulledImage",
    "ResolvedUser",
    "StoredImage",
    "UnpackedImage",
    "build_process",
    "import_archive",
    "inspect_archive",
    "is_digest",
    "parse_digest",
    "parse_image_config",
    "resolve_user",
]
