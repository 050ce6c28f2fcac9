"""The driver contract suite's fixtures: one factory per driver name.

To run the suite against another driver, add an entry to ``DRIVER_FACTORIES``: a function
taking (tmp_path, network) that returns a started-up driver or calls ``pytest.skip`` with
the reason it cannot run on this host, and its ``Workloads`` (how each scenario of the
suite is spelled for it). The ``fake`` driver runs without root on a loopback network.
"""

from __future__ import annotations

import random
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.contract.runtime.harness import build_busybox_tree, make_network
from zeitwork.agent.supervisor import InstanceNetwork
from zeitwork.runtime.base import Driver
from zeitwork.runtime.fake import FakeDriver, FakeHost, LoopbackNetwork
from zeitwork.runtime.oci import cgroups

DriverMaker = Callable[[], Driver]
"""Makes a driver instance; calling it again gives a fresh instance over the same host
state (what an agent restart looks like to a driver)."""


@dataclass(frozen=True)
class Program:
    """One workload of the suite for one driver: argv (None: the spec's own) and env."""

    argv: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workloads:
    serve: Program  # serves GET / with "hello from zeitwork" and logs "app-started-hi"
    sleep: Program  # runs, never listens, ignores SIGTERM
    exit_3: Program  # logs "bye", exits 3
    exit_0: Program
    oom: Program  # needs more than 16 MiB: OOM-killed
    missing: Program  # names /no/such/program
    isolates: bool  # runs the image's programs as its user inside namespaces, with limits


BUSYBOX = Workloads(
    serve=Program(),
    sleep=Program(["sleep", "600"]),
    exit_3=Program(["sh", "-c", "echo bye; exit 3"]),
    exit_0=Program(["true"]),
    oom=Program(["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]),
    missing=Program(["/no/such/program"]),
    isolates=True,
)
FAKE = Workloads(
    serve=Program(["serve"], {"SAY": "app-started-hi"}),
    sleep=Program(["sleep"]),
    exit_3=Program(["exit", "3"], {"SAY": "bye"}),
    exit_0=Program(["exit", "0"]),
    oom=Program(["oom"]),
    missing=Program(["/no/such/program"]),
    isolates=False,
)


def _oci(tmp_path: Path, network: InstanceNetwork, *, binary: str = "runc") -> DriverMaker:
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


def _firecracker(tmp_path: Path, network: InstanceNetwork) -> DriverMaker:
    from tests.kvm import support
    from zeitwork.runtime.firecracker import FirecrackerDriver

    reason = support.microvm_skip_reason()  # a probe: root, KVM runs a guest, binaries set
    if reason is not None:
        pytest.skip(reason)
    config = support.config(support.reflink_base_for_process())

    def make() -> Driver:
        return FirecrackerDriver(config=config)

    return make


def _oci_crun(tmp_path: Path, network: InstanceNetwork) -> DriverMaker:
    return _oci(tmp_path, network, binary="crun")


def _fake(tmp_path: Path, network: InstanceNetwork) -> DriverMaker:
    host = FakeHost()  # one machine: every driver made here sees the same workloads

    def make() -> Driver:
        return FakeDriver(host=host, owner=str(tmp_path))

    return make


DRIVER_FACTORIES: dict[str, Callable[[Path, InstanceNetwork], DriverMaker]] = {
    "oci": _oci,
    "oci-crun": _oci_crun,
    "firecracker": _firecracker,
    "fake": _fake,
}
WORKLOADS: dict[str, Workloads] = {
    "oci": BUSYBOX,
    "oci-crun": BUSYBOX,
    "firecracker": BUSYBOX,
    "fake": FAKE,
}
DRIVER_PARAMS = [
    pytest.param("oci", marks=pytest.mark.requires_root),
    pytest.param("oci-crun", marks=pytest.mark.requires_root),
    pytest.param("firecracker", marks=[pytest.mark.requires_root, pytest.mark.requires_kvm]),
    pytest.param("fake"),
]


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("busybox") is None:
        pytest.skip("busybox-static is not installed")
    return build_busybox_tree(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture(params=DRIVER_PARAMS)
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workloads(driver_name: str) -> Workloads:
    return WORKLOADS[driver_name]


@pytest.fixture
async def node_network(driver_name: str, tmp_path: Path) -> AsyncIterator[InstanceNetwork]:
    if driver_name == "fake":
        yield LoopbackNetwork(subnet=f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.0/24")
        return
    network = make_network(tmp_path / "net")
    await network.setup()
    try:
        yield network
    finally:
        await network.cleanup(keep=set())
        await network.teardown()


@pytest.fixture
async def driver_maker(
    driver_name: str, tmp_path: Path, node_network: InstanceNetwork
) -> AsyncIterator[DriverMaker]:
    maker = DRIVER_FACTORIES[driver_name](tmp_path, node_network)
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
