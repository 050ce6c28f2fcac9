"""The registry client's addressing and its one translation of statuses, over a fake
transport (httpx.MockTransport); the real registry is in tests/integration/images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from zeitwork.clients.registry import RegistryClient, RegistryCredentials
from zeitwork.core.errors import (
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ZeitworkError,
)
from zeitwork.images import manifests as m
from zeitwork.images.reference import parse_reference

Handler = Callable[[httpx.Request], httpx.Response]
REF = parse_reference("registry.example.com/team/app:v1")
BODY = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": m.OCI_MANIFEST,
        "config": {"mediaType": m.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2},
        "layers": [],
    }
).encode()


def client(handler: Handler, *, max_manifest_bytes: int = m.MAX_MANIFEST_BYTES) -> RegistryClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RegistryClient(
        http=http,
        accept=m.ACCEPT,
        max_manifest_bytes=max_manifest_bytes,
        insecure=("plain.example.com:5000", " "),
    )


def test_base_url_https_unless_loopback_or_insecure() -> None:
    c = client(lambda r: httpx.Response(200))
    assert c.base_url(REF) == "https://registry.example.com/v2/team/app"
    assert c.base_url(parse_reference("localhost:5000/a")) == "http://localhost:5000/v2/a"
    assert c.base_url(parse_reference("127.0.0.1:5000/a")) == "http://127.0.0.1:5000/v2/a"
    assert c.base_url(parse_reference("[::1]:5000/a")) == "http://[::1]:5000/v2/a"
    assert c.base_url(parse_reference("plain.example.com:5000/a")).startswith("http://")
    assert c.base_url(parse_reference("plain.example.com/a")).startswith("https://")
    assert c.base_url(parse_reference("docker.io/debian")) == (
        "https://registry-1.docker.io/v2/library/debian"
    )


def error(status: int, code: str = "X", headers: dict[str, str] | None = None) -> Handler:
    body = {"errors": [{"code": code, "message": "msg"}]}
    return lambda r: httpx.Response(status, json=body, headers=headers or {})


@pytest.mark.parametrize(
    ("handler", "kind", "text"),
    [
        (error(404, "MANIFEST_UNKNOWN"), NotFound, "MANIFEST_UNKNOWN: msg"),
        (error(403, "DENIED"), PermissionDenied, "denied access"),
        (error(401), AuthenticationRequired, "refused the credentials"),
        (error(500), ServiceUnavailable, "HTTP 500"),
        (error(429, headers={"Retry-After": "7"}), ServiceUnavailable, "HTTP 429"),
        (error(400, "MANIFEST_INVALID"), InvalidInput, "MANIFEST_INVALID"),
        (error(418), ZeitworkError, "HTTP 418"),
        (lambda r: httpx.Response(503, text="not json"), ServiceUnavailable, "HTTP 503"),
        (lambda r: httpx.Response(200, content=b"x" * 2000), InvalidInput, "larger than"),
        (
            lambda r: httpx.Response(
                200, content=BODY, headers={"Docker-Content-Digest": "sha256:" + "2" * 64}
            ),
            InvalidInput,
            "expected sha256:2222",
        ),
    ],
)
async def test_statuses(handler: Handler, kind: type[ZeitworkError], text: str) -> None:
    with pytest.raises(kind) as info:
        await client(handler, max_manifest_bytes=1000).get_manifest(REF)
    assert text in info.value.detail


async def test_transport_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ServiceUnavailable, match=r"registry\.example\.com is unreachable"):
        await client(refuse).resolve(REF)
    with pytest.raises(ServiceUnavailable, match="timed out"):
        await client(slow).resolve(REF)


async def test_manifest_and_resolve() -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=BODY, headers={"Content-Type": m.OCI_MANIFEST})

    c = client(serve)
    fetched = await c.get_manifest(REF)
    assert fetched.data == BODY and fetched.media_type == m.OCI_MANIFEST
    assert seen[0].headers["Accept"] == ", ".join(m.ACCEPT)
    # HEAD without Docker-Content-Digest: falls back to GET and hashes the body
    assert await c.resolve(REF) == m.digest_of(BODY)
    assert [r.method for r in seen] == ["GET", "HEAD", "GET"]
    pinned = REF.pinned(m.digest_of(BODY))
    assert await c.resolve(pinned) == pinned.digest  # a digest needs no request
    with pytest.raises(InvalidInput, match="expected sha256:3333"):
        await c.get_manifest(REF.pinned("sha256:" + "3" * 64))


async def test_basic_challenge_retries_once_with_credentials() -> None:
    seen: list[str | None] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Basic dTpw":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200, content=BODY)

    c = client(serve)
    await c.get_manifest(REF, credentials=RegistryCredentials("u", "p"))
    await c.get_manifest(REF, credentials=RegistryCredentials("u", "p"))
    assert seen == [None, "Basic dTpw", "Basic dTpw"]  # basic is sent up front afterwards
    with pytest.raises(AuthenticationRequired, match="requires credentials"):
        await client(serve).get_manifest(REF)


async def test_bearer_token_without_token_field() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(200, json={"nothing": True})
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/t"'}
        )

    with pytest.raises(ServiceUnavailable, match="without a token"):
        await client(serve).get_manifest(REF)


async def test_bearer_token_refreshed_once_then_refused() -> None:
    tokens: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            tokens.append(request.url.params["scope"])
            return httpx.Response(200, json={"access_token": f"t{len(tokens)}"})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/t",service="s"'},
        )

    with pytest.raises(AuthenticationRequired, match="refused the credentials"):
        await client(serve).get_manifest(REF)
    assert tokens == ["repository:team/app:pull"]  # one token, refused: final


async def test_upload_without_location(tmp_path: Path) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        return httpx.Response(202)

    with pytest.raises(ServiceUnavailable, match="without an upload location"):
        await client(serve).push_blob(REF, b"data")


async def test_download_size_mismatch_leaves_nothing(tmp_path: Path) -> None:
    data = b"some layer bytes"
    digest = m.digest_of(data)
    c = client(lambda r: httpx.Response(200, content=data))
    dest = tmp_path / "blob"
    with pytest.raises(InvalidInput, match="larger than its descriptor"):
        await c.download_blob(REF, digest, dest, size=4)
    assert not dest.exists()
    with pytest.raises(InvalidInput, match="descriptor says 100"):
        await c.download_blob(REF, digest, dest, size=100)
    assert not dest.exists()
    assert await c.download_blob(REF, digest, dest, size=len(data)) == len(data)
    assert dest.read_bytes() == data
