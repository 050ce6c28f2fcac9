"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8).

``start_registry(root, auth=...)`` runs one on a free loopback port with filesystem storage
under ``root`` and waits until ``/v2/`` answers; ``auth`` is ``None`` (anonymous),
``BasicAuth`` (an htpasswd file, bcrypt via ``htpasswd -B``) or ``TokenAuth`` (distribution's
token auth: the registry trusts a self-signed certificate, and ``TokenServer`` is a small
HTTP server in the test that signs RS256 JWTs with its key for a user and password).
``push(archive, ref)`` copies an OCI archive into it with ``skopeo copy`` (``fmt="v2s2"``
for Docker media types). Nothing reaches the internet.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

REGISTRY_BINARY = "docker-registry"


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None and shutil.which("skopeo") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str


@dataclass
class TokenServer:
    """Signs registry tokens for one user (RS256, the certificate in the ``x5c`` header)."""

    username: str
    password: str
    directory: Path
    service: str = "zeitwork-test-registry"
    issuer: str = "zeitwork-test-issuer"
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zeitwork test tokens")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.directory / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        if scope:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": self.username,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                owner.requests.append(query)
                expected = base64.b64encode(f"{owner.username}:{owner.password}".encode())
                if self.headers.get("Authorization", "") != "Basic " + expected.decode():
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": owner.token(query.get("scope", [""])[0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Registry:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    auth: BasicAuth | TokenServer | None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(self, archive: Path, ref: str, *, fmt: str | None = None) -> None:
        """``skopeo copy oci-archive:ARCHIVE docker://HOST/REF`` (``fmt``: ``v2s2``/``oci``)."""
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if fmt is not None:
            argv += ["--format", fmt]
        if self.auth is not None:
            argv += ["--dest-creds", f"{self.auth.username}:{self.auth.password}"]
        argv += [f"oci-archive:{archive}", f"docker://{self.host}/{ref}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.05)  # polling a probe with a deadline
    raise RuntimeError("docker-registry did not answer within 20 s")


@contextlib.contextmanager
def start_registry(
    root: Path, *, auth: BasicAuth | TokenServer | None = None, port: int | None = None
) -> Iterator[Registry]:
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = root / "config.yml"
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if isinstance(auth, BasicAuth):
        htpasswd = root / "htpasswd"
        subprocess.run(
            ["htpasswd", "-Bbc", str(htpasswd), auth.username, auth.password],
            check=True,
            capture_output=True,
        )
        lines += ["auth:", "  htpasswd:", "    realm: zeitwork-test", f"    path: {htpasswd}"]
    elif isinstance(auth, TokenServer):
        lines += [
            "auth:",
            "  token:",
            f"    realm: {auth.realm}",
            f"    service: {auth.service}",
            f"    issuer: {auth.issuer}",
            f"    rootcertbundle: {auth.cert_path}",
        ]
    config.write_text("\n".join(lines) + "\n")
    log = root / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(root=root, port=port, process=process, auth=auth)
    try:
        _wait_ready(port, process, log)
        yield registry
    finally:
        registry.stop()
