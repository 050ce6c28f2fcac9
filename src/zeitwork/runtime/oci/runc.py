"""The one wrapper around the OCI runtime CLI (``runc``; ``crun`` takes the same arguments).

Every call is an argv list through ``asyncio.create_subprocess_exec``; failures become
``RuntimeFailure`` carrying the runtime's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
from pathlib import Path
from typing import Any

from zeitwork.core.errors import RuntimeFailure

_MISSING = ("does not exist", "not found", "no such file")
_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_UNIFIED = b"/sys/fs/cgroup/unified"


class ContainerMissing(RuntimeFailure):
    """The runtime knows no container of that id."""


def _message(stderr: bytes, log_file: Path | None = None) -> str:
    lines: list[str] = []
    if log_file is not None and log_file.exists():
        for raw in log_file.read_text(errors="replace").splitlines()[-20:]:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                lines.append(str(entry.get("msg", "")))
    text = stderr.decode(errors="replace").strip()
    if text:
        lines.append(text)
    return "; ".join(dict.fromkeys(line for line in lines if line)) or "no message"


def _hide_unified_cgroup() -> None:
    """Runs in the child between fork and exec (``preexec_fn``): a private mount namespace
    with a tmpfs over ``/sys/fs/cgroup/unified``, so crun (1.8) sees a plain cgroup v1 host
    instead of the hybrid layout it refuses. The child is single-threaded here."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private failed")
    if libc.mount(b"tmpfs", _UNIFIED, b"tmpfs", 0, b"size=4k") != 0:
        raise OSError(ctypes.get_errno(), "tmpfs over the unified cgroup failed")


def needs_hidden_unified(root: Path = Path("/sys/fs/cgroup")) -> bool:
    """A hybrid host: v1 controllers plus a v2 hierarchy at ``unified``."""
    return (root / "unified").is_dir() and not (root / "cgroup.controllers").exists()


class RuncCli:
    def __init__(
        self,
        *,
        binary: str = "runc",
        root: Path,
        hide_unified_cgroup: bool = False,
        timeout: float = 120.0,
    ) -> None:
        self.binary = binary
        self.root = root
        self.hide_unified_cgroup = hide_unified_cgroup
        self.timeout = timeout  # a runtime call that hangs (a stuck cgroup, ...) is a failure

    async def _exec(
        self,
        *args: str,
        stdout: int | None = None,
        stderr: int | None = None,
        log_file: Path | None = None,
    ) -> bytes:
        argv = [self.binary, "--root", str(self.root)]
        if log_file is not None:
            argv += ["--log", str(log_file), "--log-format", "json"]
        argv += list(args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
                stderr=(stderr if stderr is not None else stdout)
                if stdout is not None
                else asyncio.subprocess.PIPE,
                preexec_fn=_hide_unified_cgroup if self.hide_unified_cgroup else None,
            )
        except FileNotFoundError as exc:
            raise RuntimeFailure(f"{self.binary} is not installed") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeFailure(
                f"{self.binary} {args[0]}: no answer within {self.timeout:g} s"
            ) from exc
        if proc.returncode != 0:
            message = _message(err or b"", log_file)
            what = f"{self.binary} {args[0]}: {message}"
            if any(marker in message.lower() for marker in _MISSING):
                raise ContainerMissing(what)
            raise RuntimeFailure(what)
        return out or b""

    def knows(self, container_id: str) -> bool:
        """Whether the runtime keeps state for ``container_id`` (no process spawned; both
        runc and crun keep one directory per container under their root)."""
        return (self.root / container_id).exists()

    async def version(self) -> str:
        out = await self._exec("--version")
        return out.decode().splitlines()[0] if out else self.binary

    async def run_detached(
        self,
        container_id: str,
        *,
        bundle: Path,
        pid_file: Path,
        output_fd: int,
        log_file: Path,
        error_fd: int | None = None,
    ) -> None:
        """``run --detach``: the container's stdout is ``output_fd``, its stderr
        ``error_fd`` (default: ``output_fd`` too)."""
        await self._exec(
            "run",
            "--detach",
            "--bundle",
            str(bundle),
            "--pid-file",
            str(pid_file),
            container_id,
            stdout=output_fd,
            stderr=error_fd,
            log_file=log_file,
        )

    async def state(self, container_id: str) -> dict[str, Any] | None:
        try:
            out = await self._exec("state", container_id)
        except ContainerMissing:
            return None
        value = json.loads(out)
        if not isinstance(value, dict):
            raise RuntimeFailure(f"{self.binary} state: unexpected output")
        return value

    async def kill(self, container_id: str, signal: str, *, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, signal]
        await self._exec(*args)

    async def delete(self, container_id: str, *, force: bool = True) -> bool:
        """Delete; False when there was nothing to delete."""
        try:
            await self._exec("delete", *(["--force"] if force else []), container_id)
        except ContainerMissing:
            return False
        return True

    async def list(self) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        out = await self._exec("list", "--format", "json")
        value = json.loads(out or b"null")
        return [entry for entry in (value or []) if isinstance(entry, dict)]
