"""The driver contract suite's fixtures: one factory per driver name.

To run the suite against another driver, add an entry to ``DRIVER_FACTORIES``: a function
taking (tmp_path, network) that returns a started-up driver or calls ``pytest.skip`` with
the reason it cannot run on this host.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.contract.runtime.harness import build_busybox_tree, make_network
from zeitwork.agent.network import NodeNetwork
from zeitwork.runtime.base import Driver
from zeitwork.runtime.oci import cgroups

DriverMaker = Callable[[], Driver]
"""Makes a driver instance; calling it again gives a fresh instance over the same host
state (what an agent restart looks like to a driver)."""


def _oci(tmp_path: Path, network: NodeNetwork, *, binary: str = "runc") -> DriverMaker:
    from zeitwork.runtime.oci import OciDriver, RuncCli, become_subreaper
    from zeitwork.runtime.oci.runc import needs_hidden_unified

    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")
    become_subreaper()
    suffix = uuid.uuid4().hex[:6]
    hide = binary == "crun" and needs_hidden_unified()

    def make() -> Driver:
        return OciDriver(
            runc=RuncCli(binary=binary, root=tmp_path / binary, hide_unified_cgroup=hide),
            state_dir=tmp_path / "oci",
            cgroup_parent=f"zeitwork-test-{suffix}",
            log_max_bytes=4096,
        )

    return make


def _firecracker(tmp_path: Path, network: NodeNetwork) -> DriverMaker:
    from tests.kvm import support
    from zeitwork.runtime.firecracker import FirecrackerDriver

    reason = support.microvm_skip_reason()  # a probe: root, KVM runs a guest, binaries set
    if reason is not None:
        pytest.skip(reason)
    config = support.config(support.reflink_base_for_process())

    def make() -> Driver:
        return FirecrackerDriver(config=config)

    return make


def _oci_crun(tmp_path: Path, network: NodeNetwork) -> DriverMaker:
    return _oci(tmp_path, network, binary="crun")


DRIVER_FACTORIES: dict[str, Callable[[Path, NodeNetwork], DriverMaker]] = {
    "oci": _oci,
    "oci-crun": _oci_crun,
    "firecracker": _firecracker,
}
DRIVER_PARAMS = [
    pytest.param("oci", marks=pytest.mark.requires_root),
    pytest.param("oci-crun", marks=pytest.mark.requires_root),
    pytest.param("firecracker", marks=[pytest.mark.requires_root, pytest.mark.requires_kvm]),
]


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("busybox") is None:
        pytest.skip("busybox-static is not installed")
    return build_busybox_tree(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture
async def node_network(tmp_path: Path) -> AsyncIterator[NodeNetwork]:
    network = make_network(tmp_path / "net")
    await network.setup()
    try:
        yield network
    finally:
        await network.cleanup(keep=set())
        await network.teardown()


@pytest.fixture(params=DRIVER_PARAMS)
async def driver_maker(
    request: pytest.FixtureRequest, tmp_path: Path, node_network: NodeNetwork
) -> AsyncIterator[DriverMaker]:
    maker = DRIVER_FACTORIES[request.param](tmp_path, node_network)
    try:
        yield maker
    finally:
        made = maker()
        await made.recover([])  # removes every container, directory and cgroup it left
        parent = getattr(made, "cgroup_parent", None)
        if parent:
            cgroups.remove(f"/{parent}")


@pytest.fixture
def driver(driver_maker: DriverMaker) -> Driver:
    return driver_maker()


@pytest.fixture(autouse=True)
def _subreaper_only_during_the_test() -> Iterator[None]:
    from tests.contract.runtime.harness import stop_being_subreaper

    yield
    stop_being_subreaper()
