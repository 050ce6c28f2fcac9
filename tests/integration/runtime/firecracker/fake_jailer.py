"""A stand-in for the jailer + firecracker pair, run as a real process by the driver.

``fake_jailer.py <jailer argv>`` parses the jailer's options strictly (unknown ones fail, like
the real jailer), builds ``<chroot_base>/<exec_name>/<id>/root``, creates the cgroup
directories under a test-owned cgroup root, and, as ``--new-pid-ns`` does, forks the VMM,
writes its PID to ``root/<exec_name>.pid`` and exits. The VMM (``fake_jailer.py vmm ...``,
argv[0] ``firecracker``) serves the validating fake API (``fakefc``) on the ``--api-sock``
inside the jail, writes to the logger and metrics FIFOs when they are configured, checks at
InstanceStart that every file and the TAP it was given exist, prints guest-like console
lines on stdout, and on SendCtrlAltDel prints init's exit marker and exits.

Behaviour comes from the JSON file named by ``FAKE_FC_BEHAVIOUR``: ``record`` (a JSON-lines
file for calls), ``fail`` (``{"PUT /path": "message"}``), ``ignore_ctrl_alt_del``,
``cgroup_root``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakefc


def _behaviour() -> dict[str, Any]:
    path = os.environ.get("FAKE_FC_BEHAVIOUR")
    return json.loads(Path(path).read_text()) if path else {}


def _record(behaviour: dict[str, Any], entry: dict[str, Any]) -> None:
    if behaviour.get("record"):
        with open(behaviour["record"], "a") as fh:
            fh.write(json.dumps(entry) + "\n")


def jailer_main(argv: list[str]) -> int:
    behaviour = _behaviour()
    _record(behaviour, {"jailer": argv})
    if "--" in argv:
        cut = argv.index("--")
        own, fc_args = argv[:cut], argv[cut + 1 :]
    else:
        own, fc_args = argv, []
    parser = argparse.ArgumentParser(prog="jailer", allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--id", required=True)
    parser.add_argument("--exec-file", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--chroot-base-dir", default="/srv/jailer")
    parser.add_argument("--cgroup-version", choices=["1", "2"], default="1")
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--parent-cgroup")
    parser.add_argument("--netns")
    parser.add_argument("--resource-limit", action="append", default=[])
    parser.add_argument("--daemonize", action="store_true")
    parser.add_argument("--new-pid-ns", action="store_true")
    try:
        args = parser.parse_args(own)
    except (argparse.ArgumentError, SystemExit) as exc:
        print(f"jailer: bad arguments: {exc}", flush=True)
        return 2
    if not re.match(r"^[A-Za-z0-9-]{1,64}$", args.id):
        print("jailer: invalid id", flush=True)
        return 1
    exec_file = Path(args.exec_file)
    if "firecracker" not in exec_file.name or not exec_file.is_file():
        print(f"jailer: invalid exec file {exec_file}", flush=True)
        return 1
    api_sock = "/run/firecracker.socket"
    if "--api-sock" in fc_args:
        api_sock = fc_args[fc_args.index("--api-sock") + 1]
    root = Path(args.chroot_base_dir) / exec_file.name / args.id / "root"
    root.mkdir(parents=True, exist_ok=True)
    (root / exec_file.name).write_bytes(exec_file.read_bytes())
    os.chown(root, args.uid, args.gid)
    cgroup_root = Path(behaviour.get("cgroup_root", "/nonexistent"))
    parent = args.parent_cgroup or exec_file.name
    for item in args.cgroup:
        name, _, _value = item.partition("=")
        controller = name.split(".", 1)[0]
        base = cgroup_root if args.cgroup_version == "2" else cgroup_root / controller
        (base / parent / args.id).mkdir(parents=True, exist_ok=True)
    vmm_argv = [
        "firecracker",
        str(Path(__file__).resolve()),
        "vmm",
        f"--id={args.id}",
        "--root",
        str(root),
        "--api-sock",
        api_sock,
    ]
    if args.netns:  # join the instance's network namespace, as the jailer does
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(args.netns, os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:
            print(f"jailer: setns {args.netns} failed", flush=True)
            return 1
        os.close(fd)
    # argv[0] is "firecracker" (the driver checks it), so Python cannot find its venv itself.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if not args.new_pid_ns:
        os.execv(sys.executable, vmm_argv)
    child = os.fork()
    if child == 0:
        os.execv(sys.executable, vmm_argv)
    (root / f"{exec_file.name}.pid").write_text(str(child))
    return 0


def _console(line: str) -> None:
    sys.stdout.write(line + "\r\n")
    sys.stdout.flush()


def vmm_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--id", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--api-sock", required=True)
    args = parser.parse_args(argv)
    behaviour = _behaviour()
    root = Path(args.root)
    spec = fakefc.Spec()
    fail = {tuple(key.split(" ", 1)): message for key, message in behaviour.get("fail", {}).items()}
    fake = fakefc.FakeFirecracker(spec=spec, vm_id=args.id, fail=fail)
    _record(behaviour, {"vmm_pid": os.getpid()})

    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    def on_call(fake: fakefc.FakeFirecracker, method: str, path: str, body: Any) -> None:
        if path == "/logger":
            fd = os.open(inside(body["log_path"]), os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"2026-01-01T00:00:00 [fake:main] Logger configured\n")
            os.close(fd)
        elif path == "/metrics":
            fd = os.open(inside(body["metrics_path"]), os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, json.dumps({"utc_timestamp_ms": int(time.time() * 1000)}).encode() + b"\n")
            os.close(fd)
        elif path == "/actions" and body["action_type"] == "InstanceStart":
            boot = fake.configured["PUT /boot-source"]
            missing = [
                p
                for p in [boot["kernel_image_path"]]
                + [
                    v["path_on_host"]
                    for k, v in fake.configured.items()
                    if isinstance(k, str) and k.startswith("PUT /drives/")
                ]
                if not inside(p).exists()
            ]
            for iface in (
                v for k, v in fake.configured.items() if str(k).startswith("PUT /network-interf")
            ):
                try:  # looked up in this process's network namespace, like firecracker
                    socket.if_nametoindex(iface["host_dev_name"])
                except OSError:
                    missing.append(iface["host_dev_name"])
            if missing:
                _console(f"fake-guest: missing {missing}")
                os._exit(3)
            _console(f"fake-guest: booting with {boot.get('boot_args', '')}")
            _console("fake-app: listening")
        elif path == "/actions" and body["action_type"] == "SendCtrlAltDel":
            if behaviour.get("ignore_ctrl_alt_del"):
                _console("fake-guest: ignoring Ctrl-Alt-Del")
                return
            _console("fake-app: stopping")
            _console("zeitwork-init: exit 0")
            asyncio.get_running_loop().call_later(0.02, os._exit, 0)

    def record(fake: fakefc.FakeFirecracker, method: str, path: str, body: Any) -> None:
        _record(behaviour, {"method": method, "path": path, "body": body})
        on_call(fake, method, path, body)

    def reject(fake: fakefc.FakeFirecracker, method: str, path: str, message: str) -> None:
        _record(behaviour, {"method": method, "path": path, "rejected": message})

    fake.on_call = record
    fake.on_reject = reject

    async def run() -> None:
        server = await fakefc.serve(fake, inside(args.api_sock))
        async with server:
            await server.serve_forever()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "vmm":
        sys.exit(vmm_main(sys.argv[2:]))
    sys.exit(jailer_main(sys.argv[1:]))
