"""What the guest sees, computed without I/O: kernel arguments, MAC and TAP names, and the
per-instance settings drive that ``/zeitwork-init`` reads.

The base root filesystem is shared by every instance of an image digest, so nothing about one
instance may be written into it. Per-instance settings (argv, environment, user, working
directory, hostname) travel on a second, tiny read-only drive (``/dev/vdb`` in the guest):
a POSIX shell fragment whose every value is single-quoted by ``shlex.quote``, which the init
sources. Only the network address goes on the kernel command line (``ip=``), where the
kernel configures ``eth0`` before init runs.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zeitwork.core.errors import InvalidInput

BUSYBOX = "/.zeitwork/busybox"
INIT = "/zeitwork-init"
SECTOR = 512
EXIT_MARKER = "zeitwork-init: exit "
OOM_MARKER = "zeitwork-init: oom"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER = re.compile(r"^(\d+):(\d+)$")
MAX_KERNEL_CMDLINE = 2048  # x86 COMMAND_LINE_SIZE


def netmask(prefix_len: int) -> str:
    if not 0 <= prefix_len <= 32:
        raise InvalidInput(f"prefix length {prefix_len} is not 0-32")
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix_len}").netmask)


def kernel_args(*, address: str, gateway: str, prefix_len: int, extra: Sequence[str] = ()) -> str:
    """The guest kernel command line: serial console, reboot ends the VM, the static
    address of ``eth0`` through ``ip=`` and ``/zeitwork-init`` as PID 1.

    ``ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>``
    """
    for value in (address, gateway):
        try:
            ipaddress.IPv4Address(value)
        except ValueError as exc:
            raise InvalidInput(f"{value!r} is not an IPv4 address") from exc
    for arg in extra:
        if not arg or any(ch.isspace() for ch in arg):
            raise InvalidInput(f"kernel argument {arg!r} is empty or contains whitespace")
    args = [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "pci=off",
        f"ip={address}::{gateway}:{netmask(prefix_len)}::eth0:off",
        f"init={INIT}",
        *extra,
    ]
    line = " ".join(args)
    if len(line) >= MAX_KERNEL_CMDLINE:
        raise InvalidInput("kernel command line too long")
    return line


def tap_name(instance_id: uuid.UUID, prefix: str = "zwfc") -> str:
    """15 characters at most (IFNAMSIZ - 1): the prefix, then hex digits of the id."""
    if not 1 <= len(prefix) <= 7 or not prefix.isalnum():
        raise InvalidInput(f"TAP prefix {prefix!r} must be 1-7 letters or digits")
    return prefix + instance_id.hex[: 15 - len(prefix)]


def guest_mac(instance_id: uuid.UUID) -> str:
    """A stable, locally administered unicast MAC derived from the instance id."""
    raw = instance_id.bytes[-4:]
    return "02:fc:" + ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True, slots=True)
class GuestSettings:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    user: str  # "uid:gid"
    hostname: str
    nameservers: Sequence[str] = ()


def launch_argv(settings: GuestSettings) -> list[str]:
    """The argv init runs: a clean environment, then drop to the image's user, then exec.

    ``busybox env -i K=V... busybox nsenter -S uid -G gid -- argv...`` (``nsenter`` with no
    namespace flags only sets the ids, clears supplementary groups and execs).
    """
    if not settings.argv or not settings.argv[0]:
        raise InvalidInput("the instance has no command to run")
    match = _USER.match(settings.user)
    if not match:
        raise InvalidInput(f"user {settings.user!r} must be numeric 'uid:gid'")
    env = []
    for name, value in settings.env.items():
        if not _ENV_NAME.match(name):
            raise InvalidInput(f"environment variable name {name!r} is not valid")
        if "\0" in value:
            raise InvalidInput(f"environment variable {name} contains a NUL byte")
        env.append(f"{name}={value}")
    for arg in settings.argv:
        if "\0" in arg:
            raise InvalidInput("a command argument contains a NUL byte")
    return [
        BUSYBOX,
        "env",
        "-i",
        *env,
        BUSYBOX,
        "nsenter",
        "-S",
        match.group(1),
        "-G",
        match.group(2),
        "--",
        *settings.argv,
    ]


def settings_drive(settings: GuestSettings) -> bytes:
    """The per-instance settings drive: a shell fragment, padded to whole sectors."""
    if not _HOSTNAME.match(settings.hostname):
        raise InvalidInput(f"hostname {settings.hostname!r} is not a valid host name")
    if not settings.cwd.startswith("/") or "\0" in settings.cwd:
        raise InvalidInput(f"working directory {settings.cwd!r} must be an absolute path")
    resolv = "".join(f"nameserver {ipaddress.ip_address(ns)}\n" for ns in settings.nameservers)
    lines = [
        "# zeitwork instance settings (read by /zeitwork-init)",
        f"ZW_HOSTNAME={shlex.quote(settings.hostname)}",
        f"ZW_CWD={shlex.quote(settings.cwd)}",
        f"ZW_RESOLV={shlex.quote(resolv)}",
        "set -- " + " ".join(shlex.quote(arg) for arg in launch_argv(settings)),
        "",
    ]
    data = "\n".join(lines).encode()
    padding = (-len(data)) % SECTOR
    return data + b"\n" * padding


def exit_status(lines: Iterable[str]) -> tuple[int | None, bool]:
    """The app's exit code and whether it was OOM-killed, from init's console markers."""
    code: int | None = None
    oom = False
    for line in lines:
        text = line.strip()
        if text.startswith(EXIT_MARKER):
            tail = text[len(EXIT_MARKER) :].split()
            if tail and tail[0].isdigit():
                code = int(tail[0])
        elif text == OOM_MARKER:
            oom = True
    return code, oom
