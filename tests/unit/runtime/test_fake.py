"""The fake driver's own knobs (what the contract suite does not cover): a non-loopback
address falls back to 127.0.0.1 on a kernel-chosen port, ``answer_with`` and
``cut_network`` steer a running instance, owners do not see each other's workloads."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from zeitwork.agent.health import probe
from zeitwork.runtime.base import InstanceSpec, NetworkAttachment, Phase, ProcessSpec
from zeitwork.runtime.fake import FakeDriver, FakeHost
from zeitwork.wire.health import HealthCheck


def _spec(argv: list[str], address: str = "10.1.2.3") -> InstanceSpec:
    return InstanceSpec(
        instance_id=uuid.uuid4(),
        image_digest="sha256:" + "0" * 64,
        rootfs=Path("/nonexistent"),
        process=ProcessSpec(argv=argv, env={}),
        vcpu=0.1,
        memory_mib=16,
        port=8080,
        network=NetworkAttachment(bridge="b", address=address, prefix_len=24, gateway="10.1.2.1"),
    )


async def test_steering_a_served_instance() -> None:
    host = FakeHost()
    driver = FakeDriver(host=host, owner="a")
    spec = _spec(["serve"])
    handle = await driver.start(spec)
    address, port = str(handle.data["address"]), int(handle.data["port"])
    assert address == "127.0.0.1" and port not in (0, 8080)
    check = HealthCheck(type="http", timeout=1)
    assert (await probe(check, address, port)).detail == "GET / -> 200"
    host.answer_with(spec.instance_id, 500)
    assert (await probe(check, address, port)).detail == "GET / -> 500"
    assert host.workload(spec.instance_id).requests == 2
    host.cut_network(spec.instance_id)
    refused = await probe(check, address, port)
    assert refused.detail == f"connection refused on :{port}"
    assert (await driver.inspect(handle)).phase is Phase.RUNNING  # still runs
    host.exit(spec.instance_id, 2)
    status = await driver.inspect(handle)
    assert (status.phase, status.exit_code) == (Phase.EXITED, 2)
    await host.close()


async def test_agents_on_one_fake_host_see_only_their_own() -> None:
    host = FakeHost()
    mine, theirs = FakeDriver(host=host, owner="a"), FakeDriver(host=host, owner="b")
    handle = await mine.start(_spec(["sleep"]))
    other = await theirs.start(_spec(["sleep"]))
    assert (await theirs.inspect(handle)).phase is Phase.MISSING
    recovered = await theirs.recover([])
    assert [h.instance_id for h in recovered.running] == []
    assert recovered.cleaned == [f"container fake-{other.instance_id.hex} (unknown to the agent)"]
    assert (await mine.inspect(handle)).phase is Phase.RUNNING
    stopped = await asyncio.wait_for(mine.stop(handle, grace_seconds=0.05), 2)
    assert stopped.exit_code == 137
    await host.close()
