"""The dev supervisor with real child processes: output prefixed per service, readiness by
probe, a crash noticed at once, stop with SIGTERM then SIGKILL after the timeout."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import sys
from collections.abc import Callable

import pytest

from zeitwork.cli.dev_plan import ChildSpec
from zeitwork.cli.supervisor import ChildFailed, ChildSupervisor

SERVE = """
import http.server, signal, sys
handler = http.server.SimpleHTTPRequestHandler
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("serving", flush=True)
server.serve_forever()
"""
STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(1)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spec(name: str, code: str, *args: str, port: int = 1, stop: float = 5.0) -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=(sys.executable, "-c", code, *args),
        env={"PATH": "/usr/bin:/bin"},
        ready_url=f"http://127.0.0.1:{port}/",
        stop_timeout=stop,
    )


async def test_ready_by_probe_prefixed_output_and_clean_stop() -> None:
    out = io.StringIO()
    sup = ChildSupervisor(out=out, colour=False)
    port = _free_port()
    child = await sup.start(_spec("web", SERVE, str(port), port=port))
    await sup.wait_ready(child, within=20)
    assert not sup.exited.is_set()
    codes = await sup.stop_all(("web",))
    assert codes == {"web": 0}
    assert "web          | serving" in out.getvalue()
    assert "dev: stopping web" in out.getvalue()
    assert not sup.exited.is_set()  # a stop we asked for is not a crash


async def test_a_child_that_exits_is_noticed_and_named() -> None:
    sup = ChildSupervisor(out=io.StringIO(), colour=False)
    child = await sup.start(_spec("crasher", "import sys; sys.exit(3)"))
    await asyncio.wait_for(sup.exited.wait(), 20)
    assert [c.name for c in sup.crashed()] == ["crasher"]
    assert child.process.returncode == 3
    with pytest.raises(ChildFailed, match="crasher exited with status 3"):
        await sup.wait_ready(child, within=5)


async def test_not_ready_in_time_is_a_failure_naming_the_url() -> None:
    sup = ChildSupervisor(out=io.StringIO(), colour=False)
    port = _free_port()
    child = await sup.start(_spec("mute", STUBBORN, port=port, stop=0.5))
    try:
        with pytest.raises(ChildFailed, match=f"127.0.0.1:{port}/ answered nothing"):
            await sup.wait_ready(child, within=1)
    finally:
        await sup.stop_all(("mute",))


async def test_sigterm_ignored_means_sigkill_after_the_timeout() -> None:
    out = io.StringIO()
    sup = ChildSupervisor(out=out, colour=False)
    child = await sup.start(_spec("stubborn", STUBBORN, stop=0.5))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while "ignoring SIGTERM" not in out.getvalue():  # wait until its handler is installed
        assert loop.time() < deadline, out.getvalue()
        await asyncio.sleep(0.05)
    code = await sup.stop(child)
    assert code == -9
    assert "dev: stubborn did not stop within 0.5 s; killing it" in out.getvalue()


async def test_dev_stops_loudly_when_a_child_dies_and_quietly_on_ctrl_c() -> None:
    from zeitwork.cli.dev_cmd import _Stopped, _until_stopped

    sup = ChildSupervisor(out=io.StringIO(), colour=False)
    await sup.start(_spec("load-balancer", "import sys; sys.exit(7)"))
    with pytest.raises(ChildFailed, match=r"load-balancer \(status 7\) exited unexpectedly"):
        await asyncio.wait_for(_until_stopped(asyncio.sleep(60), asyncio.Event(), sup), 20)

    calm = ChildSupervisor(out=io.StringIO(), colour=False)
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(_Stopped):
        await asyncio.wait_for(_until_stopped(asyncio.sleep(60), stop, calm), 20)
    assert await _until_stopped(asyncio.sleep(0, "done"), asyncio.Event(), calm) == "done"


async def test_hurry_kills_at_once_instead_of_waiting() -> None:
    out = io.StringIO()
    sup = ChildSupervisor(out=out, colour=False)
    child = await sup.start(_spec("slow", STUBBORN, stop=60))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while "ignoring SIGTERM" not in out.getvalue():
        assert loop.time() < deadline, out.getvalue()
        await asyncio.sleep(0.05)
    stopping = asyncio.create_task(sup.stop(child))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the stubborn child
    started = loop.time()
    sup.hurry.set()  # the second Ctrl-C
    assert await asyncio.wait_for(stopping, 10) == -9
    assert loop.time() - started < 5


class _ClosedOutput(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_output_gone_still_drains_children() -> None:
    """`zeitwork dev | head`: a child writing far more than a pipe holds is not blocked."""
    sup = ChildSupervisor(out=_ClosedOutput(), colour=False)
    chatty = "import sys\nfor i in range(20000): print('x' * 100)\n"
    child = await sup.start(_spec("chatty", chatty))
    assert await asyncio.wait_for(child.process.wait(), 20) == 0
    assert await sup.stop(child) == 0


RELOADS = """
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *a: print("reloaded", flush=True))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("up", flush=True)
while True:
    time.sleep(0.1)
"""
HANGS_UP = """
import sys, time
print("up", flush=True)
while True:
    time.sleep(0.1)
"""


async def _until(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_sighup_is_a_reload_and_never_a_failure() -> None:
    out = io.StringIO()
    sup = ChildSupervisor(out=out, colour=False)
    reloads = await sup.start(_spec("lb", RELOADS))
    plain = await sup.start(_spec("op", HANGS_UP))
    await _until(lambda: out.getvalue().count("| up") == 2)
    # dev passes its SIGHUP on to the services that reload on it
    assert sup.reload(("lb",)) == ["lb"]
    await _until(lambda: "lb           | reloaded" in out.getvalue())
    # a child that dies of a SIGHUP is started again, not reported as a crash
    first_pid = plain.process.pid
    plain.process.send_signal(signal.SIGHUP)
    await _until(lambda: sup.children[1].process.pid != first_pid)
    await _until(lambda: out.getvalue().count("op           | up") == 2)
    assert "dev: op ended on SIGHUP; starting it again" in out.getvalue()
    assert not sup.exited.is_set() and reloads.running and sup.children[1].running
    codes = await sup.stop_all(("op", "lb"))
    assert codes == {"op": -signal.SIGTERM, "lb": 0}
