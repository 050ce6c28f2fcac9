"""The one wrapper around the ``umoci`` tool (unpacking OCI layouts into trees)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from zeitwork.core.errors import RuntimeFailure


async def raw_unpack(
    layout: Path, tag: str, rootfs: Path, *, rootless: bool, binary: str = "umoci"
) -> None:
    """``umoci raw unpack --image LAYOUT:TAG ROOTFS`` (``--rootless`` when not root).

    Applies the layers in order (whiteouts, ownership, modes, devices as root); raises
    ``RuntimeFailure`` with umoci's own message when it fails. Cancelling kills umoci.
    """
    argv = [binary, "raw", "unpack"]
    if rootless:
        argv.append("--rootless")
    argv += ["--image", f"{layout}:{tag}", str(rootfs)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"umoci is not installed ({binary!r} not found)") from exc
    try:
        _, stderr = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        message = stderr.decode(errors="replace").strip().splitlines()
        tail = " | ".join(line.strip() for line in message[-5:]) or "no message"
        raise RuntimeFailure(f"umoci unpack failed (exit {proc.returncode}): {tail}")
