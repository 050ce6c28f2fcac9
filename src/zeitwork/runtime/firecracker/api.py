"""A minimal async client for Firecracker's HTTP API on its Unix socket.

Not a general HTTP client: one request per connection (``Connection: close``), JSON bodies,
``Content-Length`` framing. Firecracker answers 204 on success and ``{"fault_message": ...}``
on failure; ``_raise_for_status`` is the one place those become ``RuntimeFailure``.
The request bodies follow ``firecracker.yaml`` (Swagger 2.0, API 1.x).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from zeitwork.core.errors import RuntimeFailure

ActionType = Literal["InstanceStart", "SendCtrlAltDel", "FlushMetrics"]
_MAX_BODY = 1024 * 1024
_MAX_SUN_PATH = 100


class FirecrackerApi:
    """Talks to one firecracker process through ``socket_path``."""

    def __init__(self, *, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = [
            f"{method} {path} HTTP/1.1",
            "Host: localhost",
            "Accept: application/json",
            "Connection: close",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            head.append("Content-Type: application/json")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        try:
            async with asyncio.timeout(self._timeout):
                status, data = await self._exchange(raw)
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"firecracker API {method} {path} timed out after {self._timeout}s"
            ) from exc
        except OSError as exc:
            raise RuntimeFailure(
                f"firecracker API unreachable at {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        return _raise_for_status(method, path, status, data)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = str(self.socket_path)
        if len(path.encode()) < _MAX_SUN_PATH:
            return await asyncio.open_unix_connection(path)
        # Jail paths can exceed sun_path (108 bytes): connect through the directory's fd.
        dirfd = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            return await asyncio.open_unix_connection(
                f"/proc/self/fd/{dirfd}/{self.socket_path.name}"
            )
        finally:
            os.close(dirfd)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        reader, writer = await self._connect()
        try:
            writer.write(raw)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise RuntimeFailure(f"firecracker API sent a bad status line {status_line!r}")
            status = int(parts[1])
            length: int | None = None
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding":
                    raise RuntimeFailure("firecracker API sent a chunked body (not supported)")
            if status in (204, 304) or length == 0:
                data = b""
            elif length is not None:
                if length > _MAX_BODY:
                    raise RuntimeFailure("firecracker API response too large")
                data = await reader.readexactly(length)
            else:
                data = await reader.read(_MAX_BODY)
            return status, data
        except asyncio.IncompleteReadError as exc:
            raise RuntimeFailure("firecracker API closed the connection mid-response") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # The calls the driver makes, named after the API's resources.

    async def describe(self) -> dict[str, Any]:
        info = await self.request("GET", "/")
        if not isinstance(info, dict):
            raise RuntimeFailure("firecracker API: GET / did not return an object")
        return info

    async def put_logger(self, *, log_path: str, level: str = "Info") -> None:
        await self.request(
            "PUT", "/logger", {"log_path": log_path, "level": level, "show_level": True}
        )

    async def put_metrics(self, *, metrics_path: str) -> None:
        await self.request("PUT", "/metrics", {"metrics_path": metrics_path})

    async def put_machine_config(self, *, vcpu_count: int, mem_size_mib: int) -> None:
        await self.request(
            "PUT",
            "/machine-config",
            {"vcpu_count": vcpu_count, "mem_size_mib": mem_size_mib, "smt": False},
        )

    async def put_boot_source(self, *, kernel_image_path: str, boot_args: str) -> None:
        await self.request(
            "PUT", "/boot-source", {"kernel_image_path": kernel_image_path, "boot_args": boot_args}
        )

    async def put_drive(
        self, *, drive_id: str, path_on_host: str, is_root_device: bool, is_read_only: bool
    ) -> None:
        await self.request(
            "PUT",
            f"/drives/{drive_id}",
            {
                "drive_id": drive_id,
                "path_on_host": path_on_host,
                "is_root_device": is_root_device,
                "is_read_only": is_read_only,
            },
        )

    async def put_network_interface(
        self, *, iface_id: str, host_dev_name: str, guest_mac: str
    ) -> None:
        await self.request(
            "PUT",
            f"/network-interfaces/{iface_id}",
            {"iface_id": iface_id, "host_dev_name": host_dev_name, "guest_mac": guest_mac},
        )

    async def action(self, action_type: ActionType) -> None:
        await self.request("PUT", "/actions", {"action_type": action_type})


def _raise_for_status(method: str, path: str, status: int, data: bytes) -> Any:
    """The one place Firecracker's answers turn into results or ``RuntimeFailure``."""
    parsed: Any = None
    if data:
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
    if 200 <= status < 300:
        return parsed
    fault = ""
    if isinstance(parsed, dict):
        fault = str(parsed.get("fault_message") or "")
    if not fault:
        fault = data.decode(errors="replace").strip() or f"HTTP {status}"
    raise RuntimeFailure(
        f"firecracker {method} {path} failed: {fault}",
        extra={"status": status, "fault_message": fault, "method": method, "path": path},
    )
