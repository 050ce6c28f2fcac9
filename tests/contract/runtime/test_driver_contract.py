"""One contract for every runtime driver: start, inspect, logs, stop, destroy, recover.

Runs for real (root, real runtime, real namespaces on a real bridge); drivers that cannot
run on this host are skipped with the reason (see conftest.DRIVER_FACTORIES). The fake
driver runs it too, without root, except the isolation tests (user, capabilities,
namespaces), which only a driver that isolates can pass."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from tests.contract.runtime.conftest import DriverMaker, Program, Workloads
from tests.contract.runtime.harness import http_server_spec, wait_http, wait_until
from zeitwork.agent.supervisor import InstanceNetwork
from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.base import Driver, InstanceSpec, Phase


async def _spec(
    network: InstanceNetwork, image_tree: Path, program: Program | None = None, **process: object
) -> InstanceSpec:
    instance_id = uuid.uuid4()
    attachment = await network.attach(instance_id)
    spec = http_server_spec(instance_id=instance_id, rootfs=image_tree, network=attachment)
    if program is not None and program.argv is not None:
        process = {"argv": list(program.argv), **process}
    if program is not None and program.env:
        process = {"env": {**spec.process.env, **program.env}, **process}
    if process:
        spec = dataclasses.replace(spec, process=dataclasses.replace(spec.process, **process))  # type: ignore[arg-type]
    return spec


def _isolating(workloads: Workloads) -> None:
    if not workloads.isolates:
        pytest.skip("this driver does not isolate (the fake runs workloads in-process)")


async def _log_lines(driver: Driver, handle: object, tail: int = 50) -> list[str]:
    return [line async for line in driver.logs(handle, tail=tail)]  # type: ignore[arg-type]


async def test_start_serves_http_and_inspect_says_running(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.serve)
    handle = await driver.start(spec)
    status, body = await wait_http(f"http://{spec.network.address}:{spec.port}/")
    assert (status, body) == (200, "hello from zeitwork\n")
    current = await driver.inspect(handle)
    assert current.phase is Phase.RUNNING
    assert current.pid is not None and current.pid > 0
    # idempotent: starting the same instance again returns the running one
    again = await driver.start(spec)
    assert again.data.get("pid") == handle.data.get("pid")


async def test_logs_tail_and_follow(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.serve)
    handle = await driver.start(spec)
    await wait_http(f"http://{spec.network.address}:{spec.port}/")

    async def started() -> bool:
        return "app-started-hi" in await _log_lines(driver, handle)

    await wait_until(started)
    assert await _log_lines(driver, handle, tail=0) == []
    # follow ends once the workload has exited and everything was read
    stream = driver.logs(handle, tail=1, follow=True)
    await driver.stop(handle, grace_seconds=0.5)
    followed = [line async for line in stream]
    assert followed and len(followed) >= 1


async def test_stop_then_destroy_leaves_nothing(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.sleep)
    handle = await driver.start(spec)
    assert (await driver.inspect(handle)).phase is Phase.RUNNING
    stopped = await driver.stop(handle, grace_seconds=0.3)  # pid 1 ignores TERM: KILL follows
    assert stopped.phase is Phase.EXITED
    assert stopped.exit_code == 137
    await driver.destroy(handle)
    assert (await driver.inspect(handle)).phase is Phase.MISSING
    await driver.destroy(handle)  # twice is fine
    stopped_again = await driver.stop(handle, grace_seconds=0.1)
    assert stopped_again.phase is Phase.MISSING


async def test_exit_code_is_reported(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.exit_3)
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited)
    status = await driver.inspect(handle)
    assert status.exit_code == 3
    assert status.oom_killed is False
    assert "bye" in await _log_lines(driver, handle)


async def test_oom_kill_is_reported(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.oom)
    spec = dataclasses.replace(spec, memory_mib=16)
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited)
    status = await driver.inspect(handle)
    assert status.oom_killed is True
    assert status.exit_code == 137


async def test_failed_start_raises_runtime_message_and_leaves_nothing(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    spec = await _spec(node_network, image_tree, workloads.missing)
    with pytest.raises(RuntimeFailure) as caught:
        await driver.start(spec)
    assert "/no/such/program" in caught.value.detail
    recovered = await driver.recover([])
    assert recovered.running == []
    assert recovered.cleaned == []  # the failed start undid its own steps


async def test_recover_keeps_running_and_cleans_dead_and_strays(
    driver_maker: DriverMaker, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    first = driver_maker()
    alive_spec = await _spec(node_network, image_tree, workloads.serve)
    dead_spec = await _spec(node_network, image_tree, workloads.exit_0)
    stray_spec = await _spec(node_network, image_tree, workloads.sleep)
    alive = await first.start(alive_spec)
    dead = await first.start(dead_spec)
    await first.start(stray_spec)

    async def dead_exited() -> bool:
        return (await first.inspect(dead)).phase is Phase.EXITED

    await wait_until(dead_exited)

    restarted = driver_maker()  # a new agent process: knows only what it persisted
    recovered = await restarted.recover([alive, dead])
    assert [h.instance_id for h in recovered.running] == [alive_spec.instance_id]
    cleaned = " ".join(recovered.cleaned)
    assert dead_spec.instance_id.hex in cleaned
    assert stray_spec.instance_id.hex in cleaned
    # the kept one was not restarted: same process, still serving
    assert (await restarted.inspect(alive)).pid == alive.data.get("pid")
    await wait_http(f"http://{alive_spec.network.address}:{alive_spec.port}/")
    assert (await restarted.inspect(dead)).phase is Phase.MISSING
    # recovering again changes nothing
    again = await restarted.recover(list(recovered.running))
    assert [h.instance_id for h in again.running] == [alive_spec.instance_id]
    assert again.cleaned == []


async def test_runs_as_the_image_user_without_extra_capabilities(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    _isolating(workloads)
    spec = await _spec(
        node_network,
        image_tree,
        argv=["sh", "-c", "id; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; hostname"],
    )
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited)
    text = "\n".join(await _log_lines(driver, handle))
    assert "uid=1000(app) gid=1000(app)" in text
    assert "NoNewPrivs:\t1" in text
    cap_eff = next(line for line in text.splitlines() if line.startswith("CapEff"))
    # non-root: nothing effective beyond the ambient CAP_NET_BIND_SERVICE (bit 10)
    assert int(cap_eff.split()[1], 16) == 1 << 10


async def test_a_non_root_app_may_bind_a_low_port(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    _isolating(workloads)
    spec = await _spec(
        node_network, image_tree, argv=["sh", "-c", "id; httpd -p 80 -h /www; echo rc=$?"]
    )
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited)
    text = "\n".join(await _log_lines(driver, handle))
    assert "uid=1000(app)" in text
    assert "rc=0" in text, text


async def test_namespaces_and_mounts_cannot_be_created_inside(
    driver: Driver, node_network: InstanceNetwork, image_tree: Path, workloads: Workloads
) -> None:
    _isolating(workloads)
    script = (
        "/bin/busybox unshare -U -r true && echo userns-allowed || echo userns-denied; "
        "/bin/busybox unshare -n true && echo netns-allowed || echo netns-denied; "
        "echo done"
    )
    spec = await _spec(node_network, image_tree, argv=["sh", "-c", script])
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited)
    text = "\n".join(await _log_lines(driver, handle))
    assert "done" in text
    assert "userns-denied" in text and "userns-allowed" not in text
    assert "netns-denied" in text and "netns-allowed" not in text
