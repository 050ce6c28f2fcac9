from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.firecracker import guest

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def test_kernel_args_exact() -> None:
    assert guest.kernel_args(address="10.88.0.5", gateway="10.88.0.1", prefix_len=24) == (
        "console=ttyS0 reboot=k panic=1 pci=off "
        "ip=10.88.0.5::10.88.0.1:255.255.255.0::eth0:off init=/zeitwork-init"
    )
    assert guest.kernel_args(
        address="10.1.2.3", gateway="10.1.0.1", prefix_len=16, extra=("quiet",)
    ).endswith("ip=10.1.2.3::10.1.0.1:255.255.0.0::eth0:off init=/zeitwork-init quiet")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "10.0.0.300", "gateway": "10.0.0.1", "prefix_len": 24},
        {"address": "10.0.0.3", "gateway": "gw", "prefix_len": 24},
        {"address": "10.0.0.3", "gateway": "10.0.0.1", "prefix_len": 33},
        {"address": "10.0.0.3", "gateway": "10.0.0.1", "prefix_len": 24, "extra": ("a b",)},
    ],
)
def test_kernel_args_refuse_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        guest.kernel_args(**kwargs)  # type: ignore[arg-type]


def test_netmask() -> None:
    assert guest.netmask(0) == "0.0.0.0"
    assert guest.netmask(20) == "255.255.240.0"
    assert guest.netmask(32) == "255.255.255.255"


def test_tap_name_and_mac() -> None:
    iid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    assert guest.tap_name(iid) == "zwfc123456789ab"
    assert len(guest.tap_name(iid)) == 15
    assert guest.tap_name(iid, "zq1ab") == "zq1ab123456789a"
    with pytest.raises(InvalidInput):
        guest.tap_name(iid, "bad-prefix")
    mac = guest.guest_mac(iid)
    assert mac == "02:fc:9a:bc:de:f0"
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


def _settings(**overrides: object) -> guest.GuestSettings:
    values: dict[str, object] = {
        "argv": ["/bin/server", "--port", "8080"],
        "env": {"PORT": "8080"},
        "cwd": "/app",
        "user": "1000:1000",
        "hostname": "web-1",
    }
    values.update(overrides)
    return guest.GuestSettings(**values)  # type: ignore[arg-type]


def test_launch_argv() -> None:
    assert guest.launch_argv(_settings()) == [
        "/.zeitwork/busybox",
        "env",
        "-i",
        "PORT=8080",
        "/.zeitwork/busybox",
        "nsenter",
        "-S",
        "1000",
        "-G",
        "1000",
        "--",
        "/bin/server",
        "--port",
        "8080",
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"argv": []},
        {"user": "app"},
        {"env": {"BAD-NAME": "x"}},
        {"env": {"X": "a\0b"}},
        {"hostname": "-bad"},
        {"cwd": "relative"},
    ],
)
def test_settings_refuse_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        guest.settings_drive(_settings(**overrides))


def test_settings_drive_is_sector_padded_and_safe_in_a_real_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nasty = f'it\'s $(touch {marker}) `touch {marker}` "q" \\ ; newline\nnext ${{HOME}}'
    settings = _settings(
        argv=["/bin/echo", nasty, "*"],
        env={"GREETING": nasty, "EMPTY": ""},
        nameservers=["10.88.0.1"],
    )
    drive = guest.settings_drive(settings)
    assert len(drive) % 512 == 0
    path = tmp_path / "settings"
    path.write_bytes(drive)
    script = f'. {path}; printf "%s\\0" "$ZW_HOSTNAME" "$ZW_CWD" "$ZW_RESOLV" "$@"'
    out = subprocess.run(
        [BUSYBOX, "sh", "-c", script],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    ).stdout.decode()
    fields = out.split("\0")[:-1]
    assert fields[:3] == ["web-1", "/app", "nameserver 10.88.0.1\n"]
    assert fields[3:] == guest.launch_argv(settings)
    assert not marker.exists()


def test_exit_status() -> None:
    assert guest.exit_status(["boot", "zeitwork-init: exit 3\r\n"]) == (3, False)
    assert guest.exit_status(["zeitwork-init: oom", "zeitwork-init: exit 137"]) == (137, True)
    assert guest.exit_status(["nothing here"]) == (None, False)
