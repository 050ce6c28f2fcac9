"""The engine's deadline sweep: one connection whose deadline handling fails is aborted and
logged, and the sweep goes on for every other connection and keeps running (a failure used
to end the sweep for the whole worker: no timeout or drain ran after it)."""

from __future__ import annotations

import asyncio

from tests.unit.proxy.test_output import NoRoutes, RecordingTransport
from zeitwork.proxy.server import ClientProtocol, Proxy


class FailingOnDeadline(ClientProtocol):
    def on_deadline(self) -> None:
        raise RuntimeError("deadline handling broke")


async def test_a_failing_connection_does_not_stop_the_sweep() -> None:
    proxy = Proxy(router=NoRoutes())
    loop = asyncio.get_running_loop()
    proxy._loop = loop
    failing, failing_transport = FailingOnDeadline(proxy, tls=False), RecordingTransport()
    failing.connection_made(failing_transport)  # type: ignore[arg-type]
    late, late_transport = ClientProtocol(proxy, tls=False), RecordingTransport()
    late.connection_made(late_transport)  # type: ignore[arg-type]
    for conn in (failing, late):
        conn.deadline = loop.time() - 1.0  # both past their deadline

    proxy._sweep()
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    assert ("abort", None) in failing_transport.calls  # the failing one is cut
    # the other one's deadline was handled too (an idle connection past it is closed)
    assert late_transport.calls and late_transport.calls[-1] == ("close", None)
    assert proxy._sweeper is not None  # and the sweep is scheduled again
    proxy._sweeper.cancel()
