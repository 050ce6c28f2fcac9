"""Image references as Docker writes them: ``registry/repository[:tag][@sha256:<hex>]``.

Pure parsing, no I/O. The grammar is Docker's (``distribution/reference``): a registry host
(a name with a dot or a port, ``localhost``, or a bracketed IPv6 address, optionally with a
port), then lowercase path components separated by ``/``, then an optional tag and an
optional digest. Two defaults differ on purpose:

- **no registry is refused.** Docker reads ``app:v1`` as ``docker.io/library/app:v1``;
  Zeitwork has no default registry, so the user writes the registry (``docker.io/library/app``
  for Docker Hub, ``localhost:5000/app`` for a local one);
- no tag and no digest means ``latest``, as Docker does; a tag and a digest together pin the
  digest (the tag is kept for display only).

``docker.io`` is served by ``registry-1.docker.io``, and a one-component Docker Hub
repository is under ``library/`` (``docker.io/debian`` is ``docker.io/library/debian``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from zeitwork.core.errors import InvalidInput

MAX_REFERENCE_LENGTH = 512
MAX_NAME_LENGTH = 255
DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+$")
_LABEL = re.compile(r"^(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])$")
_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed reference. ``registry`` is ``host[:port]`` as written (lowercase host);
    ``digest`` is ``sha256:<hex>`` or ``None``; ``tag`` is ``None`` only when a digest is
    given without one."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository`` (no tag, no digest)."""
        return f"{self.registry}/{self.repository}"

    @property
    def endpoint(self) -> str:
        """The ``host[:port]`` to talk to (Docker Hub's API host differs from its name)."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    def pinned(self, digest: str) -> ImageReference:
        """The same reference pinned to ``digest`` (the tag kept for display)."""
        if _DIGEST.match(digest) is None:
            raise InvalidInput(f"not a sha256 digest: {digest[:80]!r}")
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _is_registry(first: str) -> bool:
    """Docker's rule: the first component is a registry if it has a dot or a colon, is
    ``localhost`` or is a bracketed IPv6 address."""
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def _check_registry(registry: str, ref: str) -> str:
    host, port = registry, None
    if registry.startswith("["):
        close = registry.find("]")
        if close < 0:
            raise InvalidInput(f"image reference {ref!r}: unclosed '[' in the registry")
        host, rest = registry[1:close], registry[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInput(
                f"image reference {ref!r}: {registry!r} is not a valid IPv6 address"
            ) from None
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"image reference {ref!r}: invalid registry {registry!r}")
            port = rest[1:]
        host = f"[{host}]"
    elif ":" in registry:
        host, port = registry.rsplit(":", 1)
        if ":" in host:
            raise InvalidInput(
                f"image reference {ref!r}: write an IPv6 registry address in brackets ([::1]:5000)"
            )
    if port is not None and (_PORT.match(port) is None or not 0 < int(port) < 65536):
        raise InvalidInput(f"image reference {ref!r}: registry port {port!r} is not valid")
    if not host.startswith("["):
        labels = host.split(".")
        if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise InvalidInput(
                f"image reference {ref!r}: registry host {host!r} is not a valid host name"
            )
        host = host.lower()
    return host if port is None else f"{host}:{port}"


def parse_reference(text: str) -> ImageReference:
    """Parse ``registry/repository[:tag][@sha256:<hex>]`` or raise ``InvalidInput``."""
    ref = text.strip()
    if not ref:
        raise InvalidInput("the image reference is empty")
    if len(ref) > MAX_REFERENCE_LENGTH:
        raise InvalidInput(f"the image reference is longer than {MAX_REFERENCE_LENGTH} chars")
    shown = ref[:200]
    if any(c.isspace() for c in ref):
        raise InvalidInput(f"image reference {shown!r} contains white space")
    if "://" in ref:
        raise InvalidInput(
            f"image reference {shown!r}: write it without a scheme (registry.example.com/app:v1)"
        )
    name, _, digest = ref.partition("@")
    if digest:
        if _DIGEST.match(digest) is None:
            if _ANY_DIGEST.match(digest) and not digest.startswith("sha256:"):
                raise InvalidInput(f"image reference {shown!r}: only sha256 digests are supported")
            raise InvalidInput(
                f"image reference {shown!r}: the digest must be sha256:<64 lowercase hex>"
            )
    elif ref.endswith("@"):
        raise InvalidInput(f"image reference {shown!r}: empty digest after '@'")
    first, slash, rest = name.partition("/")
    if not slash or not _is_registry(first):
        raise InvalidInput(
            f"image reference {shown!r} names no registry; Zeitwork has no default registry "
            "(Docker Hub is not assumed): write registry/repository:tag, e.g. "
            f"localhost:5000/{name or 'app'} or {DOCKER_HUB}/library/{name or 'app'}"
        )
    registry = _check_registry(first, shown)
    repository, tag = rest, None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        repository, tag = rest[:colon], rest[colon + 1 :]
        if _TAG.match(tag) is None:
            raise InvalidInput(
                f"image reference {shown!r}: tag {tag[:130]!r} is not valid (letters, digits, "
                "'_', '.', '-'; at most 128, not starting with '.' or '-')"
            )
    if not repository:
        raise InvalidInput(f"image reference {shown!r} has no repository after the registry")
    for component in repository.split("/"):
        if _COMPONENT.match(component) is None:
            if component and _COMPONENT.match(component.lower()):
                raise InvalidInput(
                    f"image reference {shown!r}: repository names are lowercase ({component!r})"
                )
            raise InvalidInput(
                f"image reference {shown!r}: repository component {component[:100]!r} is not "
                "valid (lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"image reference {shown!r}: the name is longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return ImageReference(registry, repository, tag, digest or None)


def looks_like_reference(text: str) -> bool:
    """Whether ``text`` is meant as a registry reference (it has a ``/``): the deploy
    route tells an image id from a reference with it, then parses (and refuses) the latter."""
    return "/" in text
