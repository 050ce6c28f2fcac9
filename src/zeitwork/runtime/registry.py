"""Which runtime driver a node uses: ``auto`` | ``oci`` | ``firecracker``.

``choose`` is pure (given what the host offers, it returns the driver name and the reason);
``probe`` looks at the host; ``build`` constructs the chosen driver. ``auto`` picks
firecracker only when /dev/kvm can really be opened and the firecracker and jailer binaries
and a guest kernel are configured and present; otherwise oci.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.base import Driver, DriverChoice, DriverName


@dataclass(frozen=True, slots=True)
class HostOffer:
    """What the host has for the runtimes (facts, probed once at start-up)."""

    kvm: bool
    kvm_reason: str
    firecracker_bin: Path | None
    jailer_bin: Path | None
    kernel: Path | None
    oci_runtime: str | None  # path of runc/crun if installed


@dataclass(frozen=True, slots=True)
class Choice:
    name: DriverName
    reason: str


def _firecracker_missing(offer: HostOffer) -> list[str]:
    missing = []
    if not offer.kvm:
        missing.append(offer.kvm_reason)
    if offer.firecracker_bin is None:
        missing.append("FIRECRACKER_BIN is not set or not executable")
    if offer.jailer_bin is None:
        missing.append("JAILER_BIN is not set or not executable")
    if offer.kernel is None:
        missing.append("FIRECRACKER_KERNEL is not set or not a file")
    return missing


def choose(choice: DriverChoice, offer: HostOffer) -> Choice:
    """Pick the driver for ``choice`` given ``offer``; InvalidInput when it cannot run."""
    fc_missing = _firecracker_missing(offer)
    if choice == "firecracker":
        if fc_missing:
            raise InvalidInput("ZEITWORK_RUNTIME=firecracker but " + "; ".join(fc_missing))
        return Choice("firecracker", "configured: ZEITWORK_RUNTIME=firecracker")
    if choice == "oci":
        if offer.oci_runtime is None:
            raise InvalidInput("ZEITWORK_RUNTIME=oci but the OCI runtime is not installed")
        return Choice("oci", f"configured: ZEITWORK_RUNTIME=oci ({offer.oci_runtime})")
    if not fc_missing:
        return Choice("firecracker", "auto: /dev/kvm works and firecracker, jailer, kernel set")
    if offer.oci_runtime is None:
        raise InvalidInput(
            "no runtime can run here: firecracker needs "
            + "; ".join(fc_missing)
            + ", and the OCI runtime is not installed"
        )
    return Choice("oci", "auto: firecracker unavailable (" + "; ".join(fc_missing) + ")")


def _kvm_usable(device: Path) -> tuple[bool, str]:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"{device} does not exist"
    except OSError as exc:
        return False, f"{device} cannot be opened: {exc.strerror}"
    os.close(fd)
    return True, f"{device} opens read-write"


def _executable(path: Path | None) -> Path | None:
    if path is None:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def probe(
    *,
    firecracker_bin: Path | None,
    jailer_bin: Path | None,
    kernel: Path | None,
    oci_runtime: str,
    kvm_device: Path = Path("/dev/kvm"),
) -> HostOffer:
    kvm, reason = _kvm_usable(kvm_device)
    return HostOffer(
        kvm=kvm,
        kvm_reason=reason,
        firecracker_bin=_executable(firecracker_bin),
        jailer_bin=_executable(jailer_bin),
        kernel=kernel if kernel is not None and kernel.is_file() else None,
        oci_runtime=shutil.which(oci_runtime),
    )


def build_oci(
    *, runtime_binary: str, runc_root: Path, state_dir: Path, cgroup_parent: str, log_max_bytes: int
) -> Driver:
    from zeitwork.runtime.oci import OciDriver, RuncCli, become_subreaper
    from zeitwork.runtime.oci.runc import needs_hidden_unified

    become_subreaper()
    # crun 1.8 refuses the hybrid cgroup layout; it runs in a private mount namespace with
    # the unified hierarchy hidden (tmpfs) there
    hide = Path(runtime_binary).name == "crun" and needs_hidden_unified()
    return OciDriver(
        runc=RuncCli(binary=runtime_binary, root=runc_root, hide_unified_cgroup=hide),
        state_dir=state_dir,
        cgroup_parent=cgroup_parent,
        log_max_bytes=log_max_bytes,
    )


def build_firecracker(
    *, firecracker_bin: Path, jailer_bin: Path, kernel: Path, work_dir: Path
) -> Driver:
    from zeitwork.runtime.firecracker import FirecrackerConfig, FirecrackerDriver

    driver: Driver = FirecrackerDriver(
        config=FirecrackerConfig(
            firecracker_bin=firecracker_bin,
            jailer_bin=jailer_bin,
            kernel=kernel,
            chroot_base=work_dir,
            rootfs_dir=work_dir / "zeitwork-rootfs",
        )
    )
    return driver
