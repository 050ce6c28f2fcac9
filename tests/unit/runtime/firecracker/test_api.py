"""The API client against the validating fake on a real Unix socket, and the fake's own
rules (so a driver request that breaks the contract would fail these tests)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.firecracker import fakefc
from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.firecracker.api import FirecrackerApi

pytestmark = pytest.mark.skipif(
    not fakefc.SPEC_PATH.is_file(), reason=f"Firecracker API spec not found at {fakefc.SPEC_PATH}"
)


@pytest.fixture(scope="module")
def spec() -> fakefc.Spec:
    return fakefc.Spec()


@pytest.fixture
async def served(spec: fakefc.Spec) -> AsyncIterator[tuple[fakefc.FakeFirecracker, FirecrackerApi]]:
    # A short path: AF_UNIX paths are limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="zwfc-"))
    sock = directory / "api.sock"
    fake = fakefc.FakeFirecracker(spec=spec, vm_id="vm")
    server = await fakefc.serve(fake, sock)
    try:
        yield fake, FirecrackerApi(socket_path=sock, timeout=2.0)
    finally:
        server.close()
        await server.wait_closed()
        sock.unlink(missing_ok=True)
        os.rmdir(directory)


async def _configure(api: FirecrackerApi) -> None:
    await api.put_logger(log_path="/logs.fifo")
    await api.put_metrics(metrics_path="/metrics.fifo")
    await api.put_machine_config(vcpu_count=2, mem_size_mib=256)
    await api.put_boot_source(kernel_image_path="/vmlinux", boot_args="console=ttyS0")
    await api.put_drive(
        drive_id="rootfs", path_on_host="/rootfs.ext4", is_root_device=True, is_read_only=False
    )
    await api.put_drive(
        drive_id="settings", path_on_host="/settings.img", is_root_device=False, is_read_only=True
    )
    await api.put_network_interface(
        iface_id="eth0", host_dev_name="zwt0", guest_mac="02:fc:00:00:00:01"
    )


async def test_every_driver_request_matches_the_spec(served: Any) -> None:
    fake, api = served
    info = await api.describe()
    assert info["state"] == "Not started"
    await _configure(api)
    await api.action("InstanceStart")
    await api.action("SendCtrlAltDel")
    assert fake.rejected == []
    assert fake.put_paths() == [
        "PUT /logger",
        "PUT /metrics",
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /drives/rootfs",
        "PUT /drives/settings",
        "PUT /network-interfaces/eth0",
        "PUT /actions",
        "PUT /actions",
    ]
    assert (await api.describe())["state"] == "Running"


async def test_fault_message_becomes_runtime_failure(served: Any) -> None:
    fake, api = served
    fake.fail[("PUT", "/machine-config")] = "Invalid memory size"
    with pytest.raises(RuntimeFailure) as caught:
        await api.put_machine_config(vcpu_count=1, mem_size_mib=128)
    assert caught.value.detail == "firecracker PUT /machine-config failed: Invalid memory size"
    assert caught.value.extra["status"] == 400
    assert caught.value.extra["fault_message"] == "Invalid memory size"


async def test_unreachable_socket(tmp_path: Path) -> None:
    api = FirecrackerApi(socket_path=tmp_path / "nothing.sock", timeout=1.0)
    with pytest.raises(RuntimeFailure, match="unreachable"):
        await api.describe()


async def _raw(api: FirecrackerApi, method: str, path: str, body: Any) -> str:
    try:
        await api.request(method, path, body)
    except RuntimeFailure as exc:
        return str(exc.extra["fault_message"])
    return "accepted"


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("PUT", "/nope", {}, "invalid request path"),
        ("DELETE", "/machine-config", None, "not allowed"),
        ("PUT", "/machine-config", {"vcpu_count": 1}, "'mem_size_mib' is a required property"),
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 1}, "less than the minimum"),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 1, "mem_size_mib": 128, "bogus": True},
            "Additional properties are not allowed",
        ),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "other", "path_on_host": "/x", "is_root_device": True},
            "differs from the body",
        ),
        (
            "PUT",
            "/drives/bad-id",
            {"drive_id": "bad-id", "path_on_host": "/x", "is_root_device": True},
            "invalid id",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 10},
            "less than the minimum",
        ),
        ("PUT", "/actions", {"action_type": "Reboot"}, "is not one of"),
        ("PUT", "/actions", {"action_type": "InstanceStart"}, "no boot source"),
        ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, "needs a running microVM"),
        ("PATCH", "/drives/rootfs", {"drive_id": "rootfs"}, "before the microVM started"),
        ("PUT", "/boot-source", None, "missing request body"),
    ],
)
async def test_the_fake_rejects_what_firecracker_rejects(
    served: Any, method: str, path: str, body: Any, expected: str
) -> None:
    fake, api = served
    message = await _raw(api, method, path, body)
    assert expected in message
    assert fake.calls == []


async def test_pre_boot_resources_are_refused_after_start(served: Any) -> None:
    _fake, api = served
    await api.put_boot_source(kernel_image_path="/vmlinux", boot_args="")
    assert "no root block device" in await _raw(
        api, "PUT", "/actions", {"action_type": "InstanceStart"}
    )
    await _configure(api)
    await api.action("InstanceStart")
    for method, path, body in [
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("PUT", "/boot-source", {"kernel_image_path": "/k"}),
        ("PUT", "/drives/x", {"drive_id": "x", "path_on_host": "/x", "is_root_device": False}),
        ("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "t"}),
        ("PUT", "/logger", {"log_path": "/l"}),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]:
        message = await _raw(api, method, path, body)
        assert message != "accepted", (method, path)
    assert await _raw(api, "PATCH", "/drives/rootfs", {"drive_id": "rootfs"}) == "accepted"


def test_spec_knows_pre_boot_operations(spec: fakefc.Spec) -> None:
    pre_boot = {(op.method, op.template) for op in spec.operations if op.pre_boot_only}
    assert {
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/{drive_id}"),
        ("PUT", "/network-interfaces/{iface_id}"),
    } <= pre_boot
    assert ("PUT", "/actions") not in pre_boot
    assert json.dumps(spec.definitions["Drive"])  # resolved and serialisable
