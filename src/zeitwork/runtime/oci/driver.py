"""The ``oci`` runtime driver: each instance is an OCI bundle run by runc (or crun).

Start is a list of named steps, each registering its undo on an ``AsyncExitStack``:
directories, the overlay root filesystem, ``config.json``, ``runc run --detach`` with the
console log as stdout/stderr. The agent process is a child subreaper, so a container's init
is re-parented to it when runc exits, and its exit status (and an OOM kill, read from the
cgroup) can be reported. Containers re-adopted after an agent restart are no longer its
children: their exit code is reported as unknown.

Ownership: several agents may share one host, one runc root and one cgroup parent (for
example ``zeitwork dev`` beside a real node). A container is this driver's only when its
bundle is a directory under this driver's ``state_dir``; ``recover`` removes nothing else
(another agent's containers and cgroups are left alone, whatever their names).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import resource
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from zeitwork.core.errors import InvalidInput, RuntimeFailure
from zeitwork.observability import get_logger
from zeitwork.runtime.base import (
    DriverName,
    Handle,
    InstanceSpec,
    LogEntry,
    Phase,
    Recovered,
    Status,
)
from zeitwork.runtime.oci import bundle, cgroups, logfiles, mounts
from zeitwork.runtime.oci.runc import RuncCli

log = get_logger(__name__)

PR_SET_CHILD_SUBREAPER = 36
CONTAINER_PREFIX = "zw-"
LOG_NAME = "console.log"
LOG_RECORDS = "records"
"""``handle.data["log_format"]`` of a container whose output a capture process writes as
timestamped records (``logshim.py``); absent: the container writes plain lines itself."""
CAPTURE_EXIT_SECONDS = 2.0
_RUNNING = {"running", "paused", "pausing"}


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (container inits) so their exit
    status can be collected. Returns False where the kernel refuses."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N -> 128+N, like a shell


def _nofile_limit() -> int:
    """The container's open-file limit: 65536, or the agent's own hard limit if lower
    (with noNewPrivileges a container cannot go above it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)  # also when the file was there already
        handle.write(data)


def _exists(path: str) -> bool:
    return os.path.isdir(path)


def _host_file(source: Path, fallback: str) -> str:
    try:
        text = source.read_text()
    except OSError:
        return fallback
    if source.name == "resolv.conf" and all(
        not line.startswith("nameserver") or " 127." not in f" {line.split()[-1]}"
        for line in text.splitlines()
    ):
        return text
    return fallback if source.name == "resolv.conf" else text


class OciDriver:
    name: DriverName = "oci"

    def __init__(
        self,
        *,
        runc: RuncCli,
        state_dir: Path,
        cgroup_parent: str = "zeitwork",
        log_max_bytes: int = 10 * 1024 * 1024,
        log_keep: int = 2,
        resolv_conf: Path = Path("/etc/resolv.conf"),
    ) -> None:
        self.runc = runc
        self.state_dir = state_dir
        self.cgroup_parent = cgroup_parent.strip("/")
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.resolv_conf = resolv_conf
        self._exits: dict[int, int] = {}  # pid -> exit code, for children we reaped
        state_dir.mkdir(parents=True, exist_ok=True)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def container_id(instance_id: uuid.UUID) -> str:
        return CONTAINER_PREFIX + instance_id.hex

    def _dir(self, container_id: str) -> Path:
        return self.state_dir / container_id

    def _cgroups_path(self, container_id: str) -> str:
        return f"/{self.cgroup_parent}/{container_id}"

    def _handle(
        self,
        spec_id: uuid.UUID,
        container_id: str,
        pid: int,
        netns: str,
        *,
        capture: int | None = None,
        records: bool = False,
    ) -> Handle:
        directory = self._dir(container_id)
        logs: dict[str, Any] = {}
        if capture is not None or records:
            logs["log_format"] = LOG_RECORDS
        if capture is not None:
            logs["capture_pid"] = capture
        return Handle(
            instance_id=spec_id,
            driver="oci",
            data={
                **logs,
                "container_id": container_id,
                "dir": str(directory),
                "pid": pid,
                "netns": netns,
                "cgroups_path": self._cgroups_path(container_id),
                "log": str(directory / LOG_NAME),
                "started_at": time.time(),
            },
        )

    def _reap(self, pid: int | None) -> int | None:
        """Collect the exit status of ``pid`` if it is our (adopted) child and has exited."""
        if pid is None:
            return None
        if pid in self._exits:
            return self._exits[pid]
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done == 0:
            return None
        self._exits[pid] = _exit_code(status)
        return self._exits[pid]

    def _recorded_exit(self, handle: Handle) -> int | None:
        path = Path(str(handle.data.get("dir", ""))) / "exit.json"
        try:
            return int(json.loads(path.read_text())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_exit(self, handle: Handle, code: int) -> None:
        directory = Path(str(handle.data.get("dir", "")))
        if directory.is_dir():
            with contextlib.suppress(OSError):
                (directory / "exit.json").write_text(json.dumps({"exit_code": code}))

    def _pid_alive(self, pid: int | None) -> bool:
        if pid is None:
            return False
        if self._reap(pid) is not None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def _is_our_process(self, pid: int | None, container_id: str) -> bool:
        """``pid`` is alive (not a zombie) and sits in the container's cgroup, so it is
        the container's init and not a recycled pid."""
        if not self._pid_alive(pid):
            return False
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return f"/{self.cgroup_parent}/{container_id}" in cgroup

    # -- Driver protocol ----------------------------------------------------------------
    async def start(self, spec: InstanceSpec) -> Handle:
        container_id = self.container_id(spec.instance_id)
        directory = self._dir(container_id)
        netns = spec.network.netns
        if not netns:
            raise InvalidInput("the oci driver needs a prepared network namespace")
        missing = [p for p in (spec.layers or (spec.rootfs,)) if not (p / ".").is_dir()]
        if missing:
            raise RuntimeFailure(f"image root filesystem {missing[0]} does not exist")

        existing = await self.runc.state(container_id) if self.runc.knows(container_id) else None
        if existing is not None:
            if existing.get("status") in _RUNNING:
                return self._handle(  # its capture, if any, is not known here
                    spec.instance_id,
                    container_id,
                    int(existing["pid"]),
                    netns,
                    records=logfiles.holds_records(directory / LOG_NAME),
                )
            await self.runc.delete(container_id, force=True)

        async with contextlib.AsyncExitStack() as undo:
            step = "prepare directories"
            try:
                await asyncio.to_thread(self._reset_dir, directory)
                undo.callback(shutil.rmtree, directory, True)

                step = "mount overlay root filesystem"
                target = directory / "rootfs"
                mounts.mount_overlay(
                    lower=spec.layers or spec.rootfs,
                    upper=directory / "upper",
                    work=directory / "work",
                    target=target,
                )
                undo.callback(mounts.unmount, target)

                step = "write config.json"
                resolv = directory / "resolv.conf"
                resolv.write_text(_host_file(self.resolv_conf, "nameserver 1.1.1.1\n"))
                hostname = spec.hostname or bundle.container_id(spec.instance_id.hex[:12])
                hosts = directory / "hosts"
                hosts.write_text(
                    f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{spec.network.address}\t{hostname}\n"
                )
                config = bundle.build_config(
                    spec,
                    netns_path=netns,
                    cgroups_path=self._cgroups_path(container_id),
                    resolv_conf=str(resolv),
                    hosts=str(hosts),
                    nofile=_nofile_limit(),
                )
                # the process environment holds the app's secrets: owner-only (runc is root)
                _write_private(directory / "config.json", json.dumps(config).encode())

                step = "start the log capture"
                capture = logfiles.spawn_capture(
                    directory / LOG_NAME, max_bytes=self.log_max_bytes, keep=self.log_keep
                )
                undo.push_async_callback(self._end_capture, capture.pid)

                step = "runc run"
                undo.push_async_callback(self.runc.delete, container_id)
                try:
                    await self.runc.run_detached(
                        container_id,
                        bundle=directory,
                        pid_file=directory / "pid",
                        output_fd=capture.stdout,
                        error_fd=capture.stderr,
                        log_file=directory / "runc.log",
                    )
                finally:  # the container holds them now; the capture ends when it does
                    os.close(capture.stdout)
                    os.close(capture.stderr)
                step = "read pid file"
                pid = int((directory / "pid").read_text().strip())
            except ValueError as exc:
                raise RuntimeFailure(f"{step}: {exc}") from exc
            except OSError as exc:
                reason = "no space left on device" if exc.errno == errno.ENOSPC else str(exc)
                log.warning("oci.start_failed", container_id=container_id, step=step, error=reason)
                raise RuntimeFailure(f"{step}: {reason}") from exc
            except RuntimeFailure as exc:
                log.warning(
                    "oci.start_failed", container_id=container_id, step=step, error=exc.detail
                )
                raise
            undo.pop_all()
        log.info("oci.started", container_id=container_id, pid=pid)
        return self._handle(spec.instance_id, container_id, pid, netns, capture=capture.pid)

    @staticmethod
    def _reset_dir(directory: Path) -> None:
        if directory.exists():
            mounts.unmount(directory / "rootfs")
            shutil.rmtree(directory)
        for name in ("upper", "work", "rootfs"):
            (directory / name).mkdir(parents=True, exist_ok=True)

    async def inspect(self, handle: Handle) -> Status:
        container_id = str(handle.data["container_id"])
        pid = handle.data.get("pid")
        pid = int(pid) if pid is not None else None
        if self._is_our_process(pid, container_id):
            # fast path (no runc process): the container's init is alive in its cgroup
            return Status(phase=Phase.RUNNING, pid=pid)
        state = await self.runc.state(container_id)
        if state is not None and state.get("status") in _RUNNING and self._pid_alive(pid):
            return Status(phase=Phase.RUNNING, pid=pid)
        if state is not None and state.get("status") == "created":
            return Status(phase=Phase.CREATED, pid=pid)
        code = self._reap(pid)
        if code is not None:
            self._record_exit(handle, code)
        else:
            code = self._recorded_exit(handle)
        oom = cgroups.oom_kills(str(handle.data.get("cgroups_path", ""))) > 0
        if state is None and not _exists(str(handle.data.get("dir", ""))):
            return Status(phase=Phase.MISSING, exit_code=code, oom_killed=oom)
        message = "killed by the kernel: out of memory" if oom else None
        if code is None and message is None:
            message = "exit status unknown (the process was not a child of this agent)"
        return Status(phase=Phase.EXITED, exit_code=code, oom_killed=oom, message=message)

    async def stop(self, handle: Handle, *, grace_seconds: float = 10.0) -> Status:
        container_id = str(handle.data["container_id"])
        pid = handle.data.get("pid")
        pid = int(pid) if pid is not None else None
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
            if not self._pid_alive(pid):
                break
            try:
                await self.runc.kill(container_id, sig.name, all_processes=sig == signal.SIGKILL)
            except RuntimeFailure as exc:
                log.info("oci.kill_failed", container_id=container_id, error=exc.detail)
            deadline = time.monotonic() + wait
            while self._pid_alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        status = await self.inspect(handle)
        log.info("oci.stopped", container_id=container_id, exit_code=status.exit_code)
        return status

    async def destroy(self, handle: Handle) -> None:
        container_id = str(handle.data["container_id"])
        pid = handle.data.get("pid")
        await self.runc.delete(container_id, force=True)
        if pid is not None:
            self._reap(int(pid))
        capture = handle.data.get("capture_pid")
        await self._end_capture(int(capture) if capture is not None else None)
        cgroups.remove(self._cgroups_path(container_id))  # before its directory: see recover
        directory = self._dir(container_id)
        await asyncio.to_thread(self._remove_dir, directory)
        if pid is not None:
            self._exits.pop(int(pid), None)
        log.info("oci.destroyed", container_id=container_id)

    @staticmethod
    def _remove_dir(directory: Path) -> None:
        mounts.unmount(directory / "rootfs")
        shutil.rmtree(directory, ignore_errors=True)

    async def logs(
        self, handle: Handle, *, tail: int = 100, follow: bool = False
    ) -> AsyncIterator[str]:
        async for entry in self.log_entries(handle, tail=tail, follow=follow):
            yield entry.text

    async def log_entries(
        self, handle: Handle, *, tail: int = 100, follow: bool = False
    ) -> AsyncIterator[LogEntry]:
        """The output as entries: with the time each line was written and its stream for a
        container with a capture; plain lines (no time, ``stdout``) for an older one."""
        path = Path(str(handle.data["log"]))
        end = await asyncio.to_thread(logfiles.size_of, path)
        lines = await asyncio.to_thread(logfiles.tail, path, tail, keep=self.log_keep, end=end)
        for line in lines:
            yield logfiles.entry_of(line)
        if follow:
            pid, capture = handle.data.get("pid"), handle.data.get("capture_pid")

            def alive() -> bool:  # until it ended and its capture wrote its last lines
                if pid is not None and self._pid_alive(int(pid)):
                    return True
                return capture is not None and self._capture_alive(int(capture))

            async for line in logfiles.follow(path, alive=alive, start=end):
                yield logfiles.entry_of(line)

    def _capture_alive(self, pid: int) -> bool:
        """``pid`` is alive and still a capture process (not a recycled pid)."""
        if not self._pid_alive(pid):
            return False
        try:
            return logfiles.SHIM.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    async def _end_capture(self, pid: int | None) -> None:
        """Wait (bounded) for a capture process to end after its container, then kill it."""
        if pid is None:
            return
        deadline = time.monotonic() + CAPTURE_EXIT_SECONDS
        while self._capture_alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._capture_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + CAPTURE_EXIT_SECONDS
            while self._pid_alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        self._exits.pop(pid, None)

    def owns_bundle(self, bundle: object) -> bool:
        """Whether a container's bundle path is one of this driver's directories."""
        if not isinstance(bundle, str) or not bundle:
            return False
        path = Path(bundle).resolve()
        return path.parent == self.state_dir.resolve() and path.name.startswith(CONTAINER_PREFIX)

    async def recover(self, handles: Sequence[Handle]) -> Recovered:
        listed: dict[str, dict[str, Any]] = {}
        foreign: set[str] = set()
        for entry in await self.runc.list():
            container_id = str(entry.get("id"))
            if self.owns_bundle(entry.get("bundle")):
                listed[container_id] = entry
            else:
                foreign.add(container_id)
        running: list[Handle] = []
        cleaned: list[str] = []
        kept: set[str] = set()
        for handle in handles:
            container_id = str(handle.data.get("container_id", ""))
            found = listed.get(container_id)
            if found is not None and found.get("status") in _RUNNING | {"created"}:
                pid = int(found.get("pid") or handle.data.get("pid") or 0) or None
                if self._pid_alive(pid):
                    running.append(handle)
                    kept.add(container_id)
                    continue
            await self.destroy(handle)
            cleaned.append(f"container {container_id} (no longer running)")
        for container_id in sorted(listed):
            if container_id.startswith(CONTAINER_PREFIX) and container_id not in kept:
                await self.runc.delete(container_id, force=True)
                cleaned.append(f"container {container_id} (unknown to the agent)")
        # a cgroup is ours only if its container is (destroy removes the cgroup first)
        ours = (
            {d.name for d in self.state_dir.iterdir()}
            | set(listed)
            | {str(h.data.get("container_id", "")) for h in handles}
        )
        for directory in sorted(self.state_dir.iterdir()):
            if directory.name.startswith(CONTAINER_PREFIX) and directory.name not in kept:
                await asyncio.to_thread(self._remove_dir, directory)
                cleaned.append(f"directory {directory.name}")
        for name in sorted(cgroups.children(self.cgroup_parent)):
            stray = (
                name.startswith(CONTAINER_PREFIX)
                and name not in kept
                and name not in foreign
                and name in ours
            )
            if stray and cgroups.remove(self._cgroups_path(name)):
                cleaned.append(f"cgroup {name}")
        for item in cleaned:
            log.info("oci.stray_removed", item=item)
        return Recovered(running=running, cleaned=sorted(set(cleaned)))

    async def housekeeping(self, handles: Sequence[Handle]) -> None:
        """Rotate oversized console logs and collect exit statuses of exited children."""
        for handle in handles:
            pid = handle.data.get("pid")
            if pid is not None:
                code = self._reap(int(pid))
                if code is not None:
                    self._record_exit(handle, code)
            capture = handle.data.get("capture_pid")
            if capture is not None:
                self._reap(int(capture))  # no zombie once it ended (its code is not used)
            if handle.data.get("log_format") == LOG_RECORDS:
                continue  # its capture rotates the file itself
            path = Path(str(handle.data.get("log", "")))
            await asyncio.to_thread(
                logfiles.rotate, path, max_bytes=self.log_max_bytes, keep=self.log_keep
            )

    async def version(self) -> str:
        return await self.runc.version()
