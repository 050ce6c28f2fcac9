"""A client of the OCI distribution API (``/v2/``): manifests and blobs, pull and push.

One ``RegistryClient`` per service, over one pooled ``httpx.AsyncClient`` made by
``registry_http_client`` (the project's factory). It talks to any registry named by an
``RegistryReference``: ``https://`` always, plain ``http://`` only for loopback registries and
those listed as insecure (``ZEITWORK_INSECURE_REGISTRIES``), as Docker does. TLS is
verified against the system trust store plus an optional CA bundle.

Authentication, per request, as the distribution spec has it: anonymous first; on a 401 the
``WWW-Authenticate`` challenge decides: ``Basic`` retries with the credentials, ``Bearer``
fetches a token from ``realm`` (with ``service`` and ``scope``, basic-authenticated with the
credentials if there are any) and retries with it. Tokens are kept per registry and scope
until refused. Credentials and tokens are never logged nor put into error messages.

Every blob is verified while it is read (sha256 and size), whether kept in memory or
streamed to a file; a mismatch raises ``InvalidInput`` and leaves no file. All errors are
translated in one place (``_raise_for`` and ``_transport``) into the project's root:
unreachable or 5xx → ``ServiceUnavailable``, credentials refused → ``AuthenticationRequired``
or ``PermissionDenied``, unknown repository/manifest/blob → ``NotFound``, bad content →
``InvalidInput``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import httpx
import structlog

from zeitwork.clients.factory import ClientOptions, http_client
from zeitwork.core.errors import (
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ZeitworkError,
)

log = structlog.get_logger("zeitwork.clients.registry")

_CHUNK = 1024 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_MAX_BLOB_BYTES = 8 * 1024 * 1024


class RegistryReference(Protocol):
    """What the client needs of a reference (``zeitwork.images.reference.ImageReference``
    is one; the layers keep clients from importing images)."""

    @property
    def registry(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def manifest_reference(self) -> str: ...
    @property
    def name(self) -> str: ...


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


def is_loopback_registry(registry: str) -> bool:
    """Whether ``host[:port]`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """A user name and password (or token) for one registry; the secret never shows."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: ``scheme`` lowercase, ``params`` as given."""

    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`` →
    ``Challenge("bearer", {...})``; ``None`` for an empty or malformed header."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme or not scheme.isalpha():
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            return None
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


def scope_for(repository: str, *, push: bool = False) -> str:
    """The token scope of a repository (``repository:team/app:pull[,push]``)."""
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _registry_error(response: httpx.Response) -> str:
    """The first error of a distribution error body (``{"errors": [{code, message}]}``)."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = str(errors[0].get("code", ""))
        message = str(errors[0].get("message", ""))
        return f"{code}: {message}"[:300] if code else message[:300]
    return response.reason_phrase


def _raise_for(response: httpx.Response, registry: str, what: str) -> None:
    """The one translation of a registry's error statuses."""
    status = response.status_code
    if response.is_success:
        return
    if status == 401:
        raise AuthenticationRequired(
            f"registry {registry} refused the credentials for {what}",
            extra={"registry": registry},
        )
    if status == 403:
        raise PermissionDenied(
            f"registry {registry} denied access to {what}", extra={"registry": registry}
        )
    if status == 404:
        raise NotFound(
            f"registry {registry} has no {what} ({_registry_error(response)})",
            extra={"registry": registry},
        )
    if status == 429 or status >= 500:
        retry = response.headers.get("Retry-After", "5")
        raise ServiceUnavailable(
            f"registry {registry} failed {what}: HTTP {status} {_registry_error(response)}",
            retry_after=int(retry) if retry.isdigit() else 5,
        )
    if status in (400, 405, 413, 416, 422):
        raise InvalidInput(
            f"registry {registry} refused {what}: HTTP {status} {_registry_error(response)}"
        )
    raise ZeitworkError(f"registry {registry} answered HTTP {status} to {what}")


@contextlib.contextmanager
def _transport(registry: str, what: str) -> Iterator[None]:
    """The one translation of transport failures (down, reset, timed out, bad TLS)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable(
            f"registry {registry} timed out during {what} ({type(exc).__name__})"
        ) from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"registry {registry} is unreachable or stopped answering during {what}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def registry_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The system trust store, plus ``ca_bundle`` (PEM) when given."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"registry CA bundle {ca_bundle} cannot be loaded: {exc}") from exc
    return context


def registry_http_client(
    *, ca_bundle: Path | None = None, read_timeout: float = 60.0
) -> httpx.AsyncClient:
    """The pooled client a ``RegistryClient`` uses (absolute URLs, no base)."""
    return http_client(
        ClientOptions(
            base_url="",
            verify=registry_ssl_context(ca_bundle),
            read_timeout=read_timeout,
            max_connections=16,
        )
    )


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest as served: its bytes, their digest and the served media type."""

    digest: str
    media_type: str
    data: bytes


class RegistryClient:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        accept: Sequence[str],
        max_manifest_bytes: int,
        insecure: Iterable[str] = (),
    ) -> None:
        """``accept``: the manifest media types asked for (``images.manifests.ACCEPT``);
        ``insecure``: registries (``host[:port]``) reached over plain HTTP."""
        self._http = http
        self._accept = ", ".join(accept)
        self._max_manifest_bytes = max_manifest_bytes
        self._insecure = frozenset(h.strip().lower() for h in insecure if h.strip())
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: set[str] = set()

    def allow_plain_http(self, registry: str) -> None:
        """Reach ``registry`` (``host[:port]``) over plain HTTP from now on (the platform
        registry named with ``http://``)."""
        self._insecure = self._insecure | {registry.strip().lower()}

    def is_plain_http(self, registry: str) -> bool:
        host = registry.strip().lower()
        return is_loopback_registry(host) or host in self._insecure

    async def aclose(self) -> None:
        """Close the HTTP pool this client was given (it owns it)."""
        await self._http.aclose()

    # -- addressing and authentication -----------------------------------------------------

    def base_url(self, ref: RegistryReference) -> str:
        host = ref.endpoint
        return f"{'http' if self.is_plain_http(host) else 'https'}://{host}/v2/{ref.repository}"

    def _auth_header(
        self, ref: RegistryReference, scope: str, credentials: RegistryCredentials | None
    ) -> dict[str, str]:
        token = self._tokens.get((ref.endpoint, scope))
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        if credentials is not None and ref.endpoint in self._basic:
            return {"Authorization": _basic(credentials)}
        return {}

    async def _authenticate(
        self,
        ref: RegistryReference,
        scope: str,
        response: httpx.Response,
        credentials: RegistryCredentials | None,
        what: str,
        *,
        sent_basic: bool = False,
    ) -> bool:
        """React to a 401: True if a retry is worth it (new basic or bearer auth);
        ``sent_basic``: the refused request carried the basic credentials already."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        registry = ref.registry
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if credentials is None:
                raise AuthenticationRequired(
                    f"registry {registry} requires credentials for {what}",
                    extra={"registry": registry},
                )
            if sent_basic:
                return False
            self._basic.add(ref.endpoint)  # concurrent requests may all learn it at once
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        key = (ref.endpoint, scope)
        if key in self._tokens:
            del self._tokens[key]  # refused: fetch a fresh one once
        params = {"scope": challenge.params.get("scope", scope)}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {"Authorization": _basic(credentials)} if credentials is not None else {}
        realm = challenge.params["realm"]
        with _transport(registry, f"the token request for {what}"):
            answer = await self._http.get(realm, params=params, headers=headers)
        if answer.status_code in (401, 403):
            raise AuthenticationRequired(
                f"the token service of registry {registry} refused the credentials for {what}",
                extra={"registry": registry},
            )
        _raise_for(answer, registry, f"the token request for {what}")
        try:
            body = answer.json()
        except ValueError:
            body = None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ServiceUnavailable(
                f"the token service of registry {registry} answered without a token"
            )
        self._tokens[key] = token
        log.debug("registry.token", registry=registry, scope=params["scope"])
        return True

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        url: str,
        ref: RegistryReference,
        what: str,
        *,
        credentials: RegistryCredentials | None,
        push: bool = False,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (),
    ) -> AsyncIterator[httpx.Response]:
        """One authenticated request, streamed; the response is checked (statuses in ``ok``
        pass as well) and closed on exit. A 401 is answered once (basic credentials, or a
        new bearer token); a 401 to that retry is final."""
        scope = scope_for(ref.repository, push=push)
        fresh = False
        for _attempt in range(2):
            request = self._http.build_request(
                method,
                url,
                headers={**(headers or {}), **self._auth_header(ref, scope, credentials)},
                content=content,
            )
            with _transport(ref.registry, what):
                response = await self._http.send(request, stream=True, follow_redirects=True)
            try:
                if (
                    response.status_code == 401
                    and not fresh
                    and await self._authenticate(
                        ref,
                        scope,
                        response,
                        credentials,
                        what,
                        sent_basic=request.headers.get("Authorization", "").startswith("Basic "),
                    )
                ):
                    fresh = True
                    continue
                if response.status_code not in ok:
                    if not response.is_success:
                        with _transport(ref.registry, what):
                            await response.aread()
                    _raise_for(response, ref.registry, what)
                with _transport(ref.registry, what):
                    yield response
                return
            finally:
                await response.aclose()
        raise AuthenticationRequired(
            f"registry {ref.registry} refused the credentials for {what}",
            extra={"registry": ref.registry},
        )

    def use_token(self, ref: RegistryReference, token: str, *, push: bool = False) -> None:
        """Authenticate ``ref``'s repository with a bearer token handed over by someone else
        (a node's pull token from the operator)."""
        self._tokens[(ref.endpoint, scope_for(ref.repository, push=push))] = token

    async def pull_access(
        self, ref: RegistryReference, *, credentials: RegistryCredentials | None = None
    ) -> tuple[str, str | None]:
        """How the registry lets ``ref`` be pulled: ``("anonymous", None)``, ``("basic",
        None)`` (it wants a user name and password) or ``("bearer", token)`` with a fresh
        token scoped to pulling this one repository (for handing to a node: the token is
        not the credentials it was obtained with)."""
        key = (ref.endpoint, scope_for(ref.repository))
        self._tokens.pop(key, None)
        url = f"{self.base_url(ref)}/manifests/{ref.manifest_reference}"
        async with self._exchange(
            "HEAD",
            url,
            ref,
            f"manifest {ref}",
            credentials=credentials,
            headers={"Accept": self._accept},
        ):
            pass
        token = self._tokens.get(key)
        if token is not None:
            return "bearer", token
        return ("basic", None) if ref.endpoint in self._basic else ("anonymous", None)

    # -- pull ------------------------------------------------------------------------------

    async def get_manifest(
        self, ref: RegistryReference, *, credentials: RegistryCredentials | None = None
    ) -> FetchedManifest:
        """The manifest or index ``ref`` names (tag or digest), every supported type
        accepted; a manifest fetched by digest must have that digest."""
        what = f"manifest {ref}"
        url = f"{self.base_url(ref)}/manifests/{ref.manifest_reference}"
        async with self._exchange(
            "GET", url, ref, what, credentials=credentials, headers={"Accept": self._accept}
        ) as response:
            data = await _read_limited(response, self._max_manifest_bytes, what)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            served = response.headers.get("Docker-Content-Digest")
        digest = digest_of(data)
        expected = ref.digest or (served if is_digest(served) else None)
        if expected is not None and expected != digest:
            raise InvalidInput(
                f"{what}: the registry sent a manifest with digest {digest}, expected {expected}"
            )
        return FetchedManifest(digest=digest, media_type=media_type, data=data)

    async def resolve(
        self, ref: RegistryReference, *, credentials: RegistryCredentials | None = None
    ) -> str:
        """The digest ``ref``'s tag points at now (``HEAD``; ``GET`` when the registry
        does not say in ``Docker-Content-Digest``)."""
        if ref.digest is not None:
            return ref.digest
        url = f"{self.base_url(ref)}/manifests/{ref.manifest_reference}"
        async with self._exchange(
            "HEAD",
            url,
            ref,
            f"manifest {ref}",
            credentials=credentials,
            headers={"Accept": self._accept},
        ) as response:
            served = response.headers.get("Docker-Content-Digest")
        if is_digest(served):
            return str(served)
        return (await self.get_manifest(ref, credentials=credentials)).digest

    async def read_blob(
        self,
        ref: RegistryReference,
        digest: str,
        *,
        credentials: RegistryCredentials | None = None,
        max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> bytes:
        """A small blob (a config) in memory, verified."""
        what = f"blob {digest} of {ref.name}"
        async with self._exchange(
            "GET", f"{self.base_url(ref)}/blobs/{digest}", ref, what, credentials=credentials
        ) as response:
            data = await _read_limited(response, max_bytes, what)
        if digest_of(data) != digest:
            raise InvalidInput(f"{what} does not match its sha256 (corrupt in the registry?)")
        return data

    async def download_blob(
        self,
        ref: RegistryReference,
        digest: str,
        dest: Path,
        *,
        size: int | None = None,
        credentials: RegistryCredentials | None = None,
    ) -> int:
        """Stream a blob to ``dest`` (created, must not exist), hashing while reading;
        ``dest`` is removed unless the blob is complete and matches ``digest`` (and
        ``size`` when given). Returns the byte count."""
        what = f"blob {digest} of {ref.name}"
        hasher = hashlib.sha256()
        total = 0
        done = False
        try:
            async with (
                self._exchange(
                    "GET",
                    f"{self.base_url(ref)}/blobs/{digest}",
                    ref,
                    what,
                    credentials=credentials,
                ) as response,
                await anyio.open_file(dest, "xb") as out,
            ):
                async for chunk in response.aiter_bytes(_CHUNK):
                    total += len(chunk)
                    if size is not None and total > size:
                        raise InvalidInput(f"{what} is larger than its descriptor's {size} bytes")
                    hasher.update(chunk)
                    await out.write(chunk)
            if size is not None and total != size:
                raise InvalidInput(f"{what} has {total} bytes, its descriptor says {size}")
            if "sha256:" + hasher.hexdigest() != digest:
                raise InvalidInput(f"{what} does not match its sha256 (corrupt in the registry?)")
            done = True
        finally:
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    dest.unlink()  # noqa: ASYNC240 (one cheap unlink, also under cancellation)
        return total

    # -- push ------------------------------------------------------------------------------

    async def blob_exists(
        self,
        ref: RegistryReference,
        digest: str,
        *,
        credentials: RegistryCredentials | None = None,
        push: bool = False,
    ) -> bool:
        url = f"{self.base_url(ref)}/blobs/{digest}"
        async with self._exchange(
            "HEAD", url, ref, f"blob {digest}", credentials=credentials, push=push, ok=(404,)
        ) as response:
            return response.status_code != 404

    async def push_blob(
        self,
        ref: RegistryReference,
        data: bytes | Path,
        *,
        credentials: RegistryCredentials | None = None,
        chunk_size: int | None = None,
    ) -> str:
        """Upload a blob (skipped when the registry has it); monolithic without
        ``chunk_size``, else in ``PATCH`` chunks of that size. Returns its digest."""
        digest = digest_of(data) if isinstance(data, bytes) else await _file_digest(data)
        if await self.blob_exists(ref, digest, credentials=credentials, push=True):
            return digest
        what = f"upload of blob {digest} to {ref.name}"
        async with self._exchange(
            "POST",
            f"{self.base_url(ref)}/blobs/uploads/",
            ref,
            what,
            credentials=credentials,
            push=True,
        ) as response:
            location = _location(response, what)
        if chunk_size is None:
            body = data if isinstance(data, bytes) else await anyio.Path(data).read_bytes()
            url = httpx.URL(location).copy_merge_params({"digest": digest})
            async with self._exchange(
                "PUT",
                str(url),
                ref,
                what,
                credentials=credentials,
                push=True,
                headers={"Content-Type": "application/octet-stream"},
                content=body,
            ):
                pass
        else:
            offset = 0
            async for chunk in _chunks(data, chunk_size):
                async with self._exchange(
                    "PATCH",
                    location,
                    ref,
                    what,
                    credentials=credentials,
                    push=True,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                    content=chunk,
                ) as response:
                    location = _location(response, what)
                offset += len(chunk)
            url = httpx.URL(location).copy_merge_params({"digest": digest})
            async with self._exchange(
                "PUT", str(url), ref, what, credentials=credentials, push=True, content=b""
            ):
                pass
        log.info("registry.blob_pushed", registry=ref.registry, digest=digest)
        return digest

    async def push_manifest(
        self,
        ref: RegistryReference,
        data: bytes,
        media_type: str,
        *,
        credentials: RegistryCredentials | None = None,
    ) -> str:
        """Put a manifest under ``ref``'s tag (or digest); returns its digest."""
        digest = digest_of(data)
        url = f"{self.base_url(ref)}/manifests/{ref.manifest_reference}"
        async with self._exchange(
            "PUT",
            url,
            ref,
            f"push of manifest {ref}",
            credentials=credentials,
            push=True,
            headers={"Content-Type": media_type},
            content=data,
        ):
            pass
        log.info("registry.manifest_pushed", registry=ref.registry, reference=str(ref))
        return digest


def _basic(credentials: RegistryCredentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise ServiceUnavailable(f"{what}: the registry answered without an upload location")
    return str(response.url.join(location))


async def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InvalidInput(f"{what} is larger than the limit of {limit} bytes")
    buffer = bytearray()
    async for chunk in response.aiter_bytes(_CHUNK):
        buffer += chunk
        if len(buffer) > limit:
            raise InvalidInput(f"{what} is larger than the limit of {limit} bytes")
    return bytes(buffer)


async def _file_digest(path: Path) -> str:
    # opened and closed in the worker thread: a push cancelled meanwhile (a sibling blob's
    # upload failed) cannot drop an open file on the way back
    return await anyio.to_thread.run_sync(_digest_file, path)


def _digest_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


async def _chunks(data: bytes | Path, size: int) -> AsyncIterator[bytes]:
    if isinstance(data, bytes):
        for start in range(0, len(data), size):
            yield data[start : start + size]
        return
    # No file stays open between chunks: an upload the registry cuts short leaves this
    # generator unfinished, and a handle held across the yield would then wait for the
    # garbage collector (an unclosed-file warning, a descriptor held meanwhile).
    offset = 0
    while chunk := await anyio.to_thread.run_sync(_read_at, data, offset, size):
        offset += len(chunk)
        yield chunk


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(size)
