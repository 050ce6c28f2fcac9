"""The ``firecracker`` runtime driver: jailed Firecracker microVMs configured over the API.

A boot is a list of named steps; each registers its undo on an ``AsyncExitStack`` so a failed
step unwinds everything before it (TAP, jail, views, VMM process) and the error names the
step. Host I/O lives in the step functions; everything they compute (jailer argv, cgroup
values, kernel arguments, the settings drive) comes from pure functions in ``jailer`` and
``guest``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from zeitwork.core.errors import RuntimeFailure, ZeitworkError
from zeitwork.runtime.base import (
    DriverName,
    Handle,
    InstanceSpec,
    Phase,
    Recovered,
    Status,
)
from zeitwork.runtime.firecracker import guest, jailer
from zeitwork.runtime.firecracker.api import FirecrackerApi
from zeitwork.runtime.firecracker.config import FirecrackerConfig
from zeitwork.runtime.firecracker.rootfs import CowView, RootfsStore
from zeitwork.runtime.firecracker.tap import (
    create_tap,
    delete_tap,
    list_taps,
    plumb_netns,
    unplumb_netns,
)
from zeitwork.runtime.firecracker.telemetry import Telemetry
from zeitwork.runtime.oci import logfiles

log = structlog.get_logger(__name__)

KERNEL = "vmlinux"
ROOTFS = "rootfs.ext4"
SETTINGS = "settings.img"
LOG_FIFO = "logs.fifo"
METRICS_FIFO = "metrics.fifo"
CONSOLE = "console.log"  # firecracker's stdout (the guest serial console), outside the chroot
_POLL = 0.005


def detect_cgroup_version(root: Path) -> Literal[1, 2]:
    """2 on a pure cgroup v2 host, else 1 (v1 or hybrid: controllers are on v1)."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def pid_is_vmm(pid: int, vm_id: str) -> bool:
    """True when ``pid`` is a live (not zombie) firecracker started for ``vm_id``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    args = cmdline.split(b"\0")
    if not args or b"firecracker" not in args[0]:
        return False
    wanted = vm_id.encode()
    if b"--id=" + wanted in args:
        return True
    return any(a == b"--id" and b == wanted for a, b in itertools.pairwise(args))


@dataclass
class _Boot:
    """What the steps of one start share."""

    spec: InstanceSpec
    vm_id: str
    paths: jailer.JailPaths
    tap: str
    cgroup_version: Literal[1, 2]
    cgroup_files: list[tuple[str, str]]
    api: FirecrackerApi
    netns: Path | None = None  # the instance's network namespace, when the agent made one
    view: CowView | None = None
    pid: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


_Step = Callable[[_Boot, AsyncExitStack], Awaitable[None]]


class FirecrackerDriver:
    """Runs each instance as a jailed Firecracker microVM (KVM hosts)."""

    name: DriverName = "firecracker"

    def __init__(
        self,
        *,
        config: FirecrackerConfig,
        rootfs: RootfsStore | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._cfg = config
        self._rootfs = rootfs or RootfsStore(
            directory=config.rootfs_dir,
            busybox=config.busybox,
            headroom_mib=config.rootfs_headroom_mib,
            cow_method=config.cow_method,
        )
        self._telemetry = telemetry or Telemetry()
        self._cgroup_version: Literal[1, 2] = (
            detect_cgroup_version(config.cgroup_root)
            if config.cgroup_version == "auto"
            else config.cgroup_version
        )
        self.last_boot_timings: dict[str, float] = {}

    @property
    def telemetry(self) -> Telemetry:
        return self._telemetry

    async def prepare_image(
        self, image_digest: str, rootfs: Path, *, layers: Sequence[Path] = ()
    ) -> Path:
        """Build the digest's base ext4 image ahead of the first start (optional: ``start``
        builds it when missing) from the tree, or the merged view of the image's layers.
        Returns the image path."""
        return await self._rootfs.ensure(image_digest, rootfs, layers=layers)

    async def aclose(self) -> None:
        """Stop reading FIFOs (the VMs keep running)."""
        await self._telemetry.close()

    # -- start -----------------------------------------------------------------------------

    def _steps(self) -> list[tuple[str, _Step]]:
        return [
            ("jail", self._step_jail),
            ("kernel", self._step_kernel),
            ("rootfs", self._step_rootfs),
            ("settings-drive", self._step_settings),
            ("fifos", self._step_fifos),
            ("tap", self._step_tap),
            ("jailer", self._step_jailer),
            ("logger", self._step_logger),
            ("metrics", self._step_metrics),
            ("machine-config", self._step_machine_config),
            ("boot-source", self._step_boot_source),
            ("drive-rootfs", self._step_drive_rootfs),
            ("drive-settings", self._step_drive_settings),
            ("network-interface", self._step_network),
            ("instance-start", self._step_instance_start),
        ]

    def _boot_for(self, spec: InstanceSpec) -> _Boot:
        vm_id = str(spec.instance_id)
        paths = jailer.jail_paths(
            chroot_base=self._cfg.chroot_base,
            firecracker_bin=self._cfg.firecracker_bin,
            vm_id=vm_id,
        )
        files = jailer.cgroup_limits(
            version=self._cgroup_version,
            vcpu=spec.vcpu,
            memory_mib=spec.memory_mib,
            overhead_mib=self._cfg.memory_overhead_mib,
        )
        return _Boot(
            spec=spec,
            vm_id=vm_id,
            paths=paths,
            tap=guest.tap_name(spec.instance_id, self._cfg.tap_prefix),
            netns=Path(spec.network.netns) if spec.network.netns else None,
            cgroup_version=self._cgroup_version,
            cgroup_files=files,
            api=FirecrackerApi(socket_path=paths.api_socket, timeout=self._cfg.api_timeout),
        )

    async def start(self, spec: InstanceSpec) -> Handle:
        boot = self._boot_for(spec)
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            for name, step in self._steps():
                started = loop.time()
                try:
                    await step(boot, stack)
                except asyncio.CancelledError:
                    log.warning("firecracker.boot_cancelled", instance_id=boot.vm_id, step=name)
                    raise
                except Exception as exc:
                    log.warning(
                        "firecracker.boot_failed",
                        instance_id=boot.vm_id,
                        step=name,
                        error=str(exc),
                    )
                    detail = exc.detail if isinstance(exc, ZeitworkError) else str(exc)
                    raise RuntimeFailure(
                        f"starting microVM failed at step {name}: {detail}",
                        extra={"step": name},
                    ) from exc
                boot.timings[name] = round(loop.time() - started, 6)
            stack.pop_all()
        self.last_boot_timings = dict(boot.timings)
        log.info(
            "instance.started",
            instance_id=boot.vm_id,
            driver=self.name,
            pid=boot.pid,
            seconds=round(sum(boot.timings.values()), 4),
        )
        return self._handle(boot)

    def _handle(self, boot: _Boot) -> Handle:
        if boot.view is None or boot.pid is None:
            raise RuntimeFailure("microVM boot finished without a rootfs view or a pid")
        return Handle(
            instance_id=boot.spec.instance_id,
            driver=self.name,
            data={
                "vm_id": boot.vm_id,
                "jail": str(boot.paths.base),
                "socket": str(boot.paths.api_socket),
                "pid": boot.pid,
                "tap": boot.tap,
                "netns": str(boot.netns) if boot.netns else None,
                "view": boot.view.as_dict(),
                "console": str(boot.paths.base / CONSOLE),
                "cgroups": [str(p) for p in self._cgroup_dirs(boot.vm_id, boot.cgroup_files)],
            },
        )

    def _cgroup_dirs(self, vm_id: str, files: Sequence[tuple[str, str]]) -> list[Path]:
        return jailer.cgroup_dirs(
            version=self._cgroup_version,
            root=self._cfg.cgroup_root,
            parent=self._cfg.parent_cgroup,
            vm_id=vm_id,
            files=[name for name, _ in files],
        )

    # -- the steps -------------------------------------------------------------------------

    async def _step_jail(self, boot: _Boot, stack: AsyncExitStack) -> None:
        base = boot.paths.base
        if base.exists():
            pid = _read_pid(boot.paths.pid_file)
            if pid is not None and pid_is_vmm(pid, boot.vm_id):
                raise RuntimeFailure(f"a microVM for {boot.vm_id} is already running (pid {pid})")
            await asyncio.to_thread(shutil.rmtree, base, ignore_errors=True)
        boot.paths.root.mkdir(parents=True, mode=0o755)
        stack.push_async_callback(_undo, "jail", _remove_tree, base)
        # firecracker (unprivileged, chrooted) binds its API socket in /run.
        run = boot.paths.api_socket.parent
        run.mkdir(mode=0o700)
        os.chown(run, self._cfg.uid, self._cfg.gid)

    async def _step_kernel(self, boot: _Boot, stack: AsyncExitStack) -> None:
        kernel = self._cfg.kernel
        if not kernel.is_file():
            raise RuntimeFailure(f"guest kernel {kernel} does not exist (FIRECRACKER_KERNEL)")
        dest = boot.paths.root / KERNEL
        stack.push_async_callback(_undo, "kernel", _unlink, dest)
        if kernel.stat().st_mode & 0o004:
            try:
                os.link(kernel, dest)
                return
            except OSError:
                pass  # another file system: copy (keep the kernel beside the chroot base)
        # Unreadable for the jail's uid (or not linkable): a private copy it owns.
        await asyncio.to_thread(shutil.copyfile, kernel, dest)
        os.chown(dest, self._cfg.uid, self._cfg.gid)
        dest.chmod(0o400)

    async def _step_rootfs(self, boot: _Boot, stack: AsyncExitStack) -> None:
        image = await self._rootfs.ensure(
            boot.spec.image_digest, boot.spec.rootfs, layers=boot.spec.layers
        )
        view = await self._rootfs.make_view(
            image, boot.paths.root / ROOTFS, uid=self._cfg.uid, gid=self._cfg.gid
        )
        boot.view = view
        stack.push_async_callback(_undo, "rootfs", self._rootfs.remove_view, view)

    async def _step_settings(self, boot: _Boot, stack: AsyncExitStack) -> None:
        spec = boot.spec
        data = guest.settings_drive(
            guest.GuestSettings(
                argv=list(spec.process.argv),
                env=dict(spec.process.env),
                cwd=spec.process.cwd or "/",
                user=spec.process.user,
                hostname=spec.hostname or f"zw-{spec.instance_id.hex[:12]}",
                nameservers=self._cfg.nameservers,
            )
        )
        dest = boot.paths.root / SETTINGS
        dest.write_bytes(data)
        os.chown(dest, self._cfg.uid, self._cfg.gid)
        dest.chmod(0o400)
        stack.push_async_callback(_undo, "settings-drive", _unlink, dest)

    async def _step_fifos(self, boot: _Boot, stack: AsyncExitStack) -> None:
        fifos = [boot.paths.root / LOG_FIFO, boot.paths.root / METRICS_FIFO]
        for fifo in fifos:
            os.mkfifo(fifo, 0o600)
            os.chown(fifo, self._cfg.uid, self._cfg.gid)
        await self._telemetry.attach(boot.vm_id, log_fifo=fifos[0], metrics_fifo=fifos[1])
        stack.push_async_callback(_undo, "fifos", self._telemetry.detach, boot.vm_id)

    async def _step_tap(self, boot: _Boot, stack: AsyncExitStack) -> None:
        if boot.netns is not None:
            stack.push_async_callback(_undo, "tap", unplumb_netns, boot.netns)
            boot.tap = await plumb_netns(boot.netns, uid=self._cfg.uid, gid=self._cfg.gid)
            return
        await create_tap(
            boot.tap, bridge=boot.spec.network.bridge, uid=self._cfg.uid, gid=self._cfg.gid
        )
        stack.push_async_callback(_undo, "tap", delete_tap, boot.tap)

    def jailer_argv(
        self,
        boot_vm_id: str,
        cgroup_files: Sequence[tuple[str, str]],
        netns: Path | None = None,
    ) -> list[str]:
        return jailer.jailer_argv(
            jailer_bin=self._cfg.jailer_bin,
            firecracker_bin=self._cfg.firecracker_bin,
            vm_id=boot_vm_id,
            uid=self._cfg.uid,
            gid=self._cfg.gid,
            chroot_base=self._cfg.chroot_base,
            cgroup_version=self._cgroup_version,
            cgroups=cgroup_files,
            parent_cgroup=self._cfg.parent_cgroup,
            netns=str(netns) if netns else None,
            new_pid_ns=True,
            daemonize=False,
        )

    async def _step_jailer(self, boot: _Boot, stack: AsyncExitStack) -> None:
        argv = self.jailer_argv(boot.vm_id, boot.cgroup_files, boot.netns)
        console = boot.paths.base / CONSOLE
        cgroups = self._cgroup_dirs(boot.vm_id, boot.cgroup_files)
        stack.push_async_callback(_undo, "jailer", self._kill_and_clean, boot, cgroups)
        out = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        finally:
            os.close(out)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cfg.boot_timeout
        while True:
            if boot.pid is None:
                boot.pid = _read_pid(boot.paths.pid_file)
            if boot.pid is not None and await _socket_answers(boot.api):
                break
            if proc.returncode not in (None, 0):
                raise RuntimeFailure(
                    f"jailer exited with status {proc.returncode}: {_tail(console, 5)}"
                )
            if boot.pid is not None and not _pid_exists(boot.pid):
                raise RuntimeFailure(f"firecracker exited during start: {_tail(console, 5)}")
            if loop.time() > deadline:
                raise RuntimeFailure(
                    f"the firecracker API socket did not answer within {self._cfg.boot_timeout}s"
                    f": {_tail(console, 5)}"
                )
            await asyncio.sleep(_POLL)
        # With --new-pid-ns the jailer exits right after writing the pid file; reap it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await proc.wait()

    async def _step_logger(self, boot: _Boot, stack: AsyncExitStack) -> None:
        # Undone by killing the VMM (the jailer step's undo), like every API step below.
        await boot.api.put_logger(log_path=boot.paths.inside(LOG_FIFO))

    async def _step_metrics(self, boot: _Boot, stack: AsyncExitStack) -> None:
        await boot.api.put_metrics(metrics_path=boot.paths.inside(METRICS_FIFO))

    async def _step_machine_config(self, boot: _Boot, stack: AsyncExitStack) -> None:
        await boot.api.put_machine_config(
            vcpu_count=jailer.vcpu_count(boot.spec.vcpu), mem_size_mib=boot.spec.memory_mib
        )

    async def _step_boot_source(self, boot: _Boot, stack: AsyncExitStack) -> None:
        net = boot.spec.network
        args = guest.kernel_args(
            address=net.address,
            gateway=net.gateway,
            prefix_len=net.prefix_len,
            extra=self._cfg.extra_boot_args,
        )
        await boot.api.put_boot_source(kernel_image_path=boot.paths.inside(KERNEL), boot_args=args)

    async def _step_drive_rootfs(self, boot: _Boot, stack: AsyncExitStack) -> None:
        await boot.api.put_drive(
            drive_id="rootfs",
            path_on_host=boot.paths.inside(ROOTFS),
            is_root_device=True,
            is_read_only=False,
        )

    async def _step_drive_settings(self, boot: _Boot, stack: AsyncExitStack) -> None:
        await boot.api.put_drive(
            drive_id="settings",
            path_on_host=boot.paths.inside(SETTINGS),
            is_root_device=False,
            is_read_only=True,
        )

    async def _step_network(self, boot: _Boot, stack: AsyncExitStack) -> None:
        mac = boot.spec.network.mac or guest.guest_mac(boot.spec.instance_id)
        await boot.api.put_network_interface(iface_id="eth0", host_dev_name=boot.tap, guest_mac=mac)

    async def _step_instance_start(self, boot: _Boot, stack: AsyncExitStack) -> None:
        await boot.api.action("InstanceStart")

    # -- undo / teardown helpers ---------------------------------------------------------------

    async def _kill_and_clean(self, boot: _Boot, cgroups: Sequence[Path]) -> None:
        pid = boot.pid or _read_pid(boot.paths.pid_file)
        if pid is not None:
            await _kill(pid, boot.vm_id, grace=0.0)
        await asyncio.to_thread(_remove_cgroups, cgroups)

    # -- inspect / stop / destroy ---------------------------------------------------------

    async def inspect(self, handle: Handle) -> Status:
        data = handle.data
        vm_id = str(data.get("vm_id", handle.instance_id))
        pid = data.get("pid")
        if isinstance(pid, int) and pid_is_vmm(pid, vm_id):
            api = FirecrackerApi(socket_path=Path(data["socket"]), timeout=self._cfg.api_timeout)
            try:
                info = await api.describe()
            except RuntimeFailure as exc:
                return Status(phase=Phase.RUNNING, pid=pid, message=exc.detail)
            phase = Phase.CREATED if info.get("state") == "Not started" else Phase.RUNNING
            return Status(phase=phase, pid=pid)
        jail = Path(str(data.get("jail", "")))
        if not data.get("jail") or not _exists(jail):
            return Status(phase=Phase.MISSING)
        lines = _read_lines(Path(str(data.get("console", jail / CONSOLE))))
        code, oom = guest.exit_status(lines)
        message = None if code is not None else "the microVM ended without an exit status"
        return Status(phase=Phase.EXITED, exit_code=code, oom_killed=oom, message=message)

    async def stop(self, handle: Handle, *, grace_seconds: float = 10.0) -> Status:
        data = handle.data
        vm_id = str(data.get("vm_id", handle.instance_id))
        pid = data.get("pid")
        if isinstance(pid, int) and pid_is_vmm(pid, vm_id):
            api = FirecrackerApi(socket_path=Path(data["socket"]), timeout=self._cfg.api_timeout)
            try:
                await api.action("SendCtrlAltDel")
            except RuntimeFailure as exc:
                log.warning("firecracker.ctrl_alt_del_failed", instance_id=vm_id, error=exc.detail)
            killed = await _kill(pid, vm_id, grace=grace_seconds)
            log.info("instance.stopped", instance_id=vm_id, driver=self.name, killed=killed)
        await self._telemetry.detach(vm_id)
        return await self.inspect(handle)

    async def destroy(self, handle: Handle) -> None:
        data = handle.data
        vm_id = str(data.get("vm_id", handle.instance_id))
        pid = data.get("pid")
        if isinstance(pid, int):
            await _kill(pid, vm_id, grace=0.0)
        await self._telemetry.detach(vm_id)
        if data.get("netns"):
            await unplumb_netns(Path(str(data["netns"])))
        elif data.get("tap"):
            await delete_tap(str(data["tap"]))
        if data.get("view"):
            await self._rootfs.remove_view(CowView.from_dict(data["view"]))
        if data.get("jail"):
            await _remove_tree(Path(str(data["jail"])))
        await asyncio.to_thread(_remove_cgroups, [Path(p) for p in data.get("cgroups", [])])
        log.info("instance.destroyed", instance_id=vm_id, driver=self.name)

    def logs(self, handle: Handle, *, tail: int = 100, follow: bool = False) -> AsyncIterator[str]:
        """The console's last ``tail`` lines, then (``follow``) what it prints from the moment
        of this call until the microVM is gone."""
        console = Path(str(handle.data.get("console", "")))
        return self._logs(handle, console, tail, follow, _size(console))

    async def _logs(
        self, handle: Handle, console: Path, tail: int, follow: bool, position: int
    ) -> AsyncIterator[str]:
        lines = await asyncio.to_thread(logfiles.tail, console, tail, keep=self._cfg.console_keep)
        for line in lines:
            yield line.rstrip("\r")
        if not follow:
            return
        pending = b""
        while True:
            chunk, position = _read_from(console, position)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode(errors="replace").rstrip("\r")
            else:
                status = await self.inspect(handle)
                if status.phase not in (Phase.RUNNING, Phase.CREATED):
                    if pending:
                        yield pending.decode(errors="replace").rstrip("\r")
                    return
                await asyncio.sleep(0.25)

    async def housekeeping(self, handles: Sequence[Handle]) -> None:
        """Rotate console logs past ``console_max_bytes`` (firecracker appends with
        O_APPEND, so truncating in place is safe)."""
        for handle in handles:
            if handle.driver != self.name or not handle.data.get("console"):
                continue
            await asyncio.to_thread(
                logfiles.rotate,
                Path(str(handle.data["console"])),
                max_bytes=self._cfg.console_max_bytes,
                keep=self._cfg.console_keep,
            )

    # -- recover ---------------------------------------------------------------------------

    async def recover(self, handles: Sequence[Handle]) -> Recovered:
        running: list[Handle] = []
        cleaned: list[str] = []
        known_ids: set[str] = set()
        known_taps: set[str] = set()
        for handle in handles:
            if handle.driver != self.name:
                continue
            data = handle.data
            vm_id = str(data.get("vm_id", handle.instance_id))
            known_ids.add(vm_id)
            pid = data.get("pid")
            alive = isinstance(pid, int) and pid_is_vmm(pid, vm_id)
            if alive and await _socket_answers(
                FirecrackerApi(socket_path=Path(data["socket"]), timeout=self._cfg.api_timeout)
            ):
                if not data.get("netns"):
                    known_taps.add(str(data.get("tap")))
                jail_root = Path(str(data["jail"])) / "root"
                with contextlib.suppress(OSError):
                    await self._telemetry.attach(
                        vm_id,
                        log_fifo=jail_root / LOG_FIFO,
                        metrics_fifo=jail_root / METRICS_FIFO,
                    )
                running.append(handle)
                log.info("instance.readopted", instance_id=vm_id, driver=self.name, pid=pid)
                continue
            await self.destroy(handle)
            cleaned.append(f"microVM {vm_id}: not running any more; removed its jail and TAP")
        cleaned += await self._clean_strays(known_ids, known_taps)
        return Recovered(running=running, cleaned=cleaned)

    async def _clean_strays(self, known_ids: set[str], known_taps: set[str]) -> list[str]:
        cleaned: list[str] = []
        jails = self._cfg.chroot_base / self._cfg.firecracker_bin.name
        if jails.is_dir():
            for entry in sorted(jails.iterdir()):
                if entry.name in known_ids or not _looks_like_uuid(entry.name):
                    continue
                pid = _read_pid(entry / "root" / f"{self._cfg.firecracker_bin.name}.pid")
                if pid is not None:
                    await _kill(pid, entry.name, grace=0.0)
                cgroups = jailer.cgroup_dirs(
                    version=self._cgroup_version,
                    root=self._cfg.cgroup_root,
                    parent=self._cfg.parent_cgroup,
                    vm_id=entry.name,
                    files=["cpu.max", "memory.max"]
                    if self._cgroup_version == 2
                    else ["cpu.cfs_quota_us", "memory.limit_in_bytes"],
                )
                await _remove_tree(entry)
                await asyncio.to_thread(_remove_cgroups, cgroups)
                cleaned.append(f"stray jail {entry.name} removed")
        for tap in await list_taps(self._cfg.tap_prefix):
            if tap not in known_taps:
                await delete_tap(tap)
                cleaned.append(f"stray TAP {tap} removed")
        return cleaned


# -- small I/O helpers (module-private) --------------------------------------------------------


async def _undo(step: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run one undo; log and swallow its failure so the original error surfaces."""
    try:
        await fn(*args)
    except Exception as exc:
        log.error("firecracker.undo_failed", step=step, error=str(exc))


async def _remove_tree(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)


async def _unlink(path: Path) -> None:
    await asyncio.to_thread(path.unlink, missing_ok=True)


def _exists(path: Path) -> bool:
    return path.exists()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, position: int) -> tuple[bytes, int]:
    """Bytes appended since ``position`` (from 0 again after a rotation truncated it)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < position:
                position = 0
            fh.seek(position)
            chunk = fh.read(1024 * 1024)
            return chunk, fh.tell()
    except OSError:
        return b"", position


def _remove_cgroups(dirs: Sequence[Path]) -> None:
    for directory in dirs:
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()


def _pid_exists(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_lines(path: Path, limit: int = 200) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return [raw.decode(errors="replace") for raw in collections.deque(fh, maxlen=limit)]
    except OSError:
        return []


def _tail(path: Path, count: int) -> str:
    lines = [line.strip() for line in _read_lines(path, count) if line.strip()]
    return " | ".join(lines) or "(no output)"


def _looks_like_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


async def _socket_answers(api: FirecrackerApi) -> bool:
    if not api.socket_path.exists():
        return False
    try:
        await api.describe()
    except RuntimeFailure:
        return False
    return True


async def _wait_exit(pid: int, within: float) -> bool:
    """Wait (through a pidfd, no polling) until ``pid`` exits; False on timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(within):
            await exited
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _kill(pid: int, vm_id: str, *, grace: float) -> bool:
    """Wait up to ``grace`` for the VMM to exit, then SIGKILL it. True when it was killed."""
    if not pid_is_vmm(pid, vm_id):
        return False
    if grace > 0 and await _wait_exit(pid, grace):
        return False
    if not pid_is_vmm(pid, vm_id):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await _wait_exit(pid, 5.0)
    return True
