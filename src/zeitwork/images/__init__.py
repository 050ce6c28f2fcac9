"""OCI images: validated import into a content-addressed store (operator side) and an
unpacked, reference-counted, LRU-evicted cache (node side). See ``docs/images.md``.

This package does file and subprocess I/O only (no HTTP, no database): the operator feeds
``import_archive`` the request body; the agent gives ``ImageCache.ensure`` a coroutine that
downloads the archive to a path.
"""

from __future__ import annotations

from zeitwork.images.config import ImageConfig, parse_image_config
from zeitwork.images.digests import is_digest, parse_digest
from zeitwork.images.layout import ArchiveInfo, inspect_archive
from zeitwork.images.store import ImageStore, ImportedImage, import_archive

__all__ = [
    "ArchiveInfo",
    "ImageConfig",
    "ImageStore",
    "ImportedImage",
    "import_archive",
    "inspect_archive",
    "is_digest",
    "parse_digest",
    "parse_image_config",
]
