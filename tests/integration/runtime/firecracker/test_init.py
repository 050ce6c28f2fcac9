"""``/zeitwork-init`` for real, as PID 1, without a VM: the built ext4 image is loop-mounted
and the init runs as PID 1 of new PID, mount, UTS, IPC and network namespaces chrooted into
it, with the per-instance settings drive as a real block device at ``/dev/vdb``.

(PID 1 of a child PID namespace calling reboot(2) only ends that namespace, which is what
the init does when the app exits, so this is safe for the host.)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.runtime.firecracker.conftest import BUSYBOX
from zeitwork.runtime.firecracker import guest
from zeitwork.runtime.firecracker.rootfs import RootfsStore

pytestmark = pytest.mark.requires_root

APPLETS = ("sh", "id", "hostname", "pwd", "sleep", "echo", "cat")


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("/.zeitwork/busybox")
    (root / "etc").mkdir()
    (root / "srv").mkdir()
    os.chown(root / "srv", 1000, 1000)
    return root


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class Guest:
    def __init__(self, work: Path, image: Path, settings: guest.GuestSettings) -> None:
        self.work = work
        self.view = work / "view.ext4"
        self.view.write_bytes(image.read_bytes())  # a test copy (the driver uses reflinks)
        self.mnt = work / "mnt"
        self.mnt.mkdir()
        self.loops: list[str] = []
        self.mounts: list[Path] = []
        drive = work / "settings.img"
        drive.write_bytes(guest.settings_drive(settings))
        self._mount(["-o", "loop", str(self.view)], self.mnt)
        self._mount(["-t", "tmpfs", "tmpfs"], self.mnt / "dev")
        loop = _run("losetup", "--find", "--show", "--read-only", str(drive))
        self.loops.append(loop)
        os.mknod(self.mnt / "dev" / "vdb", 0o600 | 0o060000, os.stat(loop).st_rdev)
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                f"--root={self.mnt}",
                "/zeitwork-init",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = ""

    def _mount(self, args: list[str], target: Path) -> None:
        target.mkdir(exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        self.mounts.append(target)

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen; output so far:\n{self.output}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
                if not chunk:
                    assert text in self.output, f"{text!r} not seen; output:\n{self.output}"
                self.output += chunk

    def init_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture
async def image(tmp_path: Path) -> Path:
    store = RootfsStore(directory=tmp_path / "images", busybox=BUSYBOX, headroom_mib=8)
    return await store.ensure("sha256:" + uuid.uuid4().hex * 2, _tree(tmp_path / "tree"))


@pytest.fixture
def boot(tmp_path: Path, image: Path) -> Iterator[object]:
    guests: list[Guest] = []

    def start(settings: guest.GuestSettings) -> Guest:
        work = tmp_path / f"g{len(guests)}"
        work.mkdir()
        made = Guest(work, image, settings)
        guests.append(made)
        return made

    yield start
    for made in guests:
        made.close()


APP = (
    'echo "user=$(id -u):$(id -g) cwd=$(pwd) host=$(hostname) greet=$GREETING path=$PATH"; '
    "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
)


def test_init_runs_the_app_as_its_user_and_forwards_ctrl_alt_del(boot) -> None:  # type: ignore[no-untyped-def]
    vm = boot(
        guest.GuestSettings(
            argv=["/bin/sh", "-c", APP],
            env={"GREETING": 'it\'s "quoted" $(nope)', "PATH": "/bin"},
            cwd="/srv",
            user="1000:1000",
            hostname="web-1",
        )
    )
    vm.wait_for("ready")
    assert 'user=1000:1000 cwd=/srv host=web-1 greet=it\'s "quoted" $(nope) path=/bin' in vm.output
    os.kill(vm.init_pid(), signal.SIGINT)  # what the kernel sends init on Ctrl-Alt-Del
    vm.wait_for("zeitwork-init: exit 7")
    assert "got-term" in vm.output
    assert vm.proc.wait(timeout=10) is not None
    code, oom = guest.exit_status(vm.output.splitlines())
    assert (code, oom) == (7, False)


def test_init_reports_the_exit_code_and_ends_when_the_app_exits(boot) -> None:  # type: ignore[no-untyped-def]
    vm = boot(
        guest.GuestSettings(
            argv=["/bin/sh", "-c", "echo bye; exit 3"],
            env={},
            cwd="/",
            user="0:0",
            hostname="h",
        )
    )
    vm.wait_for("zeitwork-init: exit 3")
    assert "bye" in vm.output
    vm.proc.wait(timeout=10)


def test_init_fails_clearly_when_the_working_directory_is_missing(boot) -> None:  # type: ignore[no-untyped-def]
    vm = boot(guest.GuestSettings(argv=["/bin/sh"], env={}, cwd="/nope", user="0:0", hostname="h"))
    vm.wait_for("zeitwork-init: exit 126")
