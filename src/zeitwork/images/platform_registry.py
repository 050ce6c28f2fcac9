"""The platform registry: where every image the operator imports is kept, by digest.

``ZEITWORK_REGISTRY_URL`` names it: ``[http://|https://]host[:port][/prefix]``. No scheme
means ``https``; ``http://`` is plain HTTP (loopback, or a registry the operator also lists
in ``ZEITWORK_INSECURE_REGISTRIES``; the URL itself counts as that listing). ``prefix`` is a
repository namespace (``team/zeitwork``) the images go under. An image named ``NAME`` is
kept as ``host/[prefix/]library/<repository of NAME>@sha256:...``: the repository only
groups blobs for people browsing the registry, the digest is what every pull names.

Pure: parsing and naming, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zeitwork.core.errors import InvalidInput
from zeitwork.images.reference import (
    ImageReference,
    _check_registry,
    looks_like_reference,
    parse_reference,
)

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
NAMESPACE = "library"


@dataclass(frozen=True, slots=True)
class PlatformRegistry:
    host: str
    prefix: str = ""
    plain_http: bool = False

    @property
    def url(self) -> str:
        scheme = "http" if self.plain_http else "https"
        return f"{scheme}://{self.host}" + (f"/{self.prefix}" if self.prefix else "")

    def repository_for(self, name: str) -> str:
        """The repository an image called ``name`` is kept in (an import's ``?name=`` or
        the reference it was pulled by)."""
        base = name
        if looks_like_reference(name):
            try:
                base = parse_reference(name).repository.rsplit("/", 1)[-1]
            except InvalidInput:
                base = name.rsplit("/", 1)[-1]
        component = _NOT_NAME.sub("-", base.split("@")[0].split(":")[0].lower()).strip("-")
        component = component[:100].strip("-") or "image"
        path = f"{NAMESPACE}/{component}"
        return f"{self.prefix}/{path}" if self.prefix else path

    def reference(self, name: str, digest: str) -> ImageReference:
        """Where the image ``digest`` called ``name`` is kept (pinned by digest)."""
        return ImageReference(self.host, self.repository_for(name), None, None).pinned(digest)

    def holds(self, ref: ImageReference) -> bool:
        """Whether ``ref`` is in this registry already (its location needs no push)."""
        return ref.endpoint == self.host


def parse_registry_url(text: str) -> PlatformRegistry:
    """``ZEITWORK_REGISTRY_URL`` → ``PlatformRegistry``, or ``InvalidInput`` naming what is
    wrong."""
    raw = text.strip()
    if "@" in raw:  # user:password@host: never repeat it
        raise InvalidInput(
            "ZEITWORK_REGISTRY_URL holds credentials: write scheme://host[:port][/prefix] "
            "and put them in ZEITWORK_REGISTRY_USERNAME/PASSWORD"
        )
    plain = False
    rest = raw
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        if scheme.lower() not in ("http", "https"):
            raise InvalidInput(f"ZEITWORK_REGISTRY_URL {raw[:100]!r}: the scheme is http or https")
        plain = scheme.lower() == "http"
    host, _, prefix = rest.partition("/")
    if not host:
        raise InvalidInput(f"ZEITWORK_REGISTRY_URL {raw[:100]!r} names no host")
    if "?" in rest or "#" in rest:
        raise InvalidInput(
            f"ZEITWORK_REGISTRY_URL {raw[:100]!r}: write scheme://host[:port][/prefix]"
        )
    host = _check_registry(host, f"ZEITWORK_REGISTRY_URL {raw[:100]}")
    prefix = prefix.strip("/")
    for component in prefix.split("/") if prefix else ():
        if _COMPONENT.match(component) is None:
            raise InvalidInput(
                f"ZEITWORK_REGISTRY_URL {raw[:100]!r}: the path {prefix[:100]!r} is not a "
                "repository namespace (lowercase letters and digits, separated by '/', '.', "
                "'_' or '-')"
            )
    return PlatformRegistry(host=host, prefix=prefix, plain_http=plain)
