"""A validating stand-in for Firecracker's API, on a real Unix socket.

Every request is checked against ``firecracker.yaml`` (the Swagger 2.0 contract beside the
repository, ``../shared/firecracker/``) and against the server's own rules beyond the schema:

- the path and method exist in the spec; the body validates against the operation's schema
  (``jsonschema``, with unknown fields rejected as Firecracker's ``deny_unknown_fields`` does);
- the id in the path equals the id in the body (``drive_id``, ``iface_id``, pmem ``id``) and
  ids match ``[A-Za-z0-9_]+``;
- "Pre-boot only" operations (from the spec's own summaries, plus logger and metrics, which
  Firecracker configures once before boot) are refused after ``InstanceStart``; "Post-boot
  only" ones before it;
- ``InstanceStart`` needs a boot source and a root drive first and happens once;
  ``SendCtrlAltDel`` needs a started VM.

It records every call in order (``calls``) and can be told to fail one step
(``fail={("PUT", "/network-interfaces/eth0"): "message"}``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[4]
SPEC_PATH = Path(
    os.environ.get(
        "FIRECRACKER_API_SPEC", str(REPO.parent / "shared" / "firecracker" / "firecracker.yaml")
    )
)
_ID = re.compile(r"^[A-Za-z0-9_]+$")
_PATH_IDS = {"drive_id": "drive_id", "iface_id": "iface_id", "id": "id"}
_CONFIGURE_ONCE = {("PUT", "/logger"), ("PUT", "/metrics")}


def _strict(schema: Any) -> Any:
    """Copy of ``schema`` where every object with properties rejects unknown fields."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    params: list[str]
    body_schema: dict[str, Any] | None
    body_required: bool
    pre_boot_only: bool
    post_boot_only: bool


class Spec:
    """The operations of ``firecracker.yaml`` and a strict body validator for each."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        raw = yaml.safe_load(path.read_text())
        self.version = str(raw["info"]["version"])
        self.definitions = _strict(raw["definitions"])
        self.operations: list[Operation] = []
        for template, methods in raw["paths"].items():
            params = re.findall(r"\{(\w+)\}", template)
            pattern = re.compile(
                "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            )
            for method, op in methods.items():
                body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
                summary = f"{op.get('summary', '')} {op.get('description', '')}"
                self.operations.append(
                    Operation(
                        method=method.upper(),
                        template=template,
                        pattern=pattern,
                        params=params,
                        body_schema=body["schema"] if body else None,
                        body_required=bool(body and body.get("required")),
                        pre_boot_only="Pre-boot only" in summary,
                        post_boot_only="Post-boot only" in summary,
                    )
                )

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations:
            found = op.pattern.match(path)
            if found and op.method == method:
                return op, found.groupdict()
        return None

    def path_exists(self, path: str) -> bool:
        return any(op.pattern.match(path) for op in self.operations)

    def validate(self, schema: dict[str, Any], body: Any) -> None:
        full = {"definitions": self.definitions, **_strict(schema)}
        jsonschema.Draft4Validator(full).validate(body)


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FakeFirecracker:
    """The VMM's state as the API sees it, with the server's rules beyond the schema."""

    spec: Spec
    vm_id: str = "fake"
    fail: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    started: bool = False
    configured: dict[str, Any] = field(default_factory=dict)
    on_call: Callable[[FakeFirecracker, str, str, Any], None] | None = None
    on_reject: Callable[[FakeFirecracker, str, str, str], None] | None = None

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        try:
            result = self._handle(method, path, raw)
        except Rejected as exc:
            self.rejected.append((method, path, exc.message))
            if self.on_reject is not None:
                self.on_reject(self, method, path, exc.message)
            return exc.status, {"fault_message": exc.message}
        return result

    def _handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        found = self.spec.match(method, path)
        if found is None:
            if self.spec.path_exists(path):
                raise Rejected(405, f"method {method} is not allowed on {path}")
            raise Rejected(400, f"invalid request path {path}")
        op, params = found
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Rejected(400, f"body is not JSON: {exc}") from exc
        if op.body_schema is not None:
            if body is None and op.body_required:
                raise Rejected(400, "missing request body")
            if body is not None:
                try:
                    self.spec.validate(op.body_schema, body)
                except jsonschema.ValidationError as exc:
                    raise Rejected(400, f"body does not match the spec: {exc.message}") from exc
        elif body is not None:
            raise Rejected(400, f"{method} {op.template} takes no body")
        for param, value in params.items():
            if not _ID.match(value):
                raise Rejected(400, f"invalid id {value!r}: use [A-Za-z0-9_]+")
            key = _PATH_IDS.get(param)
            if key and isinstance(body, dict) and body.get(key) != value:
                raise Rejected(400, f"the id in the path ({value}) differs from the body's {key}")
        if op.pre_boot_only and self.started:
            raise Rejected(400, f"{method} {op.template} is not allowed after the microVM started")
        if op.post_boot_only and not self.started:
            raise Rejected(400, f"{method} {op.template} is not allowed before the microVM started")
        key = (method, op.template)
        if key in _CONFIGURE_ONCE and (self.started or key in self.configured):
            raise Rejected(400, f"{op.template} can be configured once, before boot")
        if (method, path) in self.fail:
            raise Rejected(400, self.fail[(method, path)])
        if method == "PUT" and op.template == "/actions":
            self._action(body["action_type"])
        self.calls.append((method, path, body))
        if method == "PUT":
            self.configured[key] = True
            self.configured[f"{method} {path}"] = body
        if self.on_call is not None:
            self.on_call(self, method, path, body)
        if method == "GET" and op.template == "/":
            return 200, {
                "app_name": "Firecracker",
                "id": self.vm_id,
                "state": "Running" if self.started else "Not started",
                "vmm_version": self.spec.version,
            }
        if method == "GET" and op.template == "/version":
            return 200, {"firecracker_version": self.spec.version}
        return 204, None

    def _action(self, action: str) -> None:
        if action == "InstanceStart":
            if self.started:
                raise Rejected(400, "the microVM is already running")
            if ("PUT", "/boot-source") not in self.configured:
                raise Rejected(400, "cannot start: no boot source configured")
            drives = [
                v
                for k, v in self.configured.items()
                if isinstance(k, str) and k.startswith("PUT /drives/")
            ]
            if not any(d.get("is_root_device") for d in drives):
                raise Rejected(400, "cannot start: no root block device")
            self.started = True
        elif action == "SendCtrlAltDel" and not self.started:
            raise Rejected(400, "SendCtrlAltDel needs a running microVM")

    def put_paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.calls if m != "GET"]


async def _serve_connection(
    fake: FakeFirecracker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                body = b""
                while True:
                    nxt = conn.next_event()
                    if nxt is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                        continue
                    if isinstance(nxt, h11.Data):
                        body += nxt.data
                        continue
                    break
                status, payload = fake.handle(
                    event.method.decode(), event.target.decode().split("?")[0], body
                )
                out = b"" if payload is None else json.dumps(payload).encode()
                headers = [("Server", "Firecracker API"), ("Content-Length", str(len(out)))]
                if out:
                    headers.append(("Content-Type", "application/json"))
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                if out:
                    writer.write(conn.send(h11.Data(data=out)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return
    except (h11.RemoteProtocolError, ConnectionError):
        return
    finally:
        writer.close()


async def serve(fake: FakeFirecracker, socket_path: Path) -> asyncio.Server:
    """Serve ``fake`` on ``socket_path`` (the caller closes the returned server); like
    firecracker, it does not create the socket's directory."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(fake, reader, writer)

    # Bind through the directory's fd: jail paths can be longer than sun_path allows.
    dirfd = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"/proc/self/fd/{dirfd}/{socket_path.name}")
    finally:
        os.close(dirfd)
    return await asyncio.start_unix_server(on_client, sock=sock)


def fresh(spec: Spec, **kwargs: Any) -> FakeFirecracker:
    return FakeFirecracker(spec=spec, **copy.deepcopy(kwargs))
