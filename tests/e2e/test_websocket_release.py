"""WebSockets across a real rolling release (issue 19 item 5): the platform of
``test_releases`` (a real operator, node agents on two network-namespace hosts running runc
instances, the load balancer and the edge as processes) serving an app that speaks WebSocket
(``tests/ws_image.py``: websocketd, every echo naming the release and the instance).

With ``CLIENTS`` WebSocket clients connected through the edge to v1, a rolling release to
v2: each v1 connection stays open and keeps echoing while its instance drains, then gets a
close frame with code 1001 (Going Away; not a reset, not 1006) once the balancer's
``LB_TUNNEL_DRAIN_TIMEOUT`` has passed, before the release's ``drain_timeout`` stops the
instance; the client reconnects at once and, once v1 left the route, lands on v2 (a client
whose first instance drains while the other v1 instance still serves may land there and get
a second 1001). Meanwhile a new WebSocket every 0.2 s and plain HTTP (keep-alive and a
connection per request, ``Load``) fail none.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.e2e.lan import Lan
from tests.e2e.releases_kit import (
    STRATEGY,
    DataPlane,
    Load,
    data_plane,
    deploy,
    only_version_running,
    settled,
)
from tests.integration.agent.harness import AgentHost
from tests.integration.agent.operator_process import import_image
from tests.ws_image import build_ws_image, instance_hostname
from zeitwork.proxy.tunnel import CLOSE_WAIT

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]

CLIENTS = 8
TUNNEL_DRAIN = 3.0  # LB_TUNNEL_DRAIN_TIMEOUT: a tunnel runs on this long after its backend left
DRAIN = 7.0  # the release's drain_timeout: the instance is stopped this long after it left
LATE = 2.0  # s the route change may take to reach the balancer and its sweep (loaded machine)
ECHO_EVERY = 0.1


def ws_connect(plane: DataPlane) -> connect:
    """A WebSocket to the app through the edge (``Host``: the app's domain)."""
    return connect(
        f"ws://{plane.domain}/",
        host="127.0.0.1",
        port=plane.edge.port,
        ping_interval=None,
        open_timeout=10,
        close_timeout=5,
    )


async def hello(ws: ClientConnection) -> tuple[str, str]:
    """The release and the instance serving ``ws``."""
    await ws.send("hello")
    version, instance, rest = str(await asyncio.wait_for(ws.recv(), 10)).split(" ", 2)
    assert rest == "hello"
    return version, instance


@dataclass
class Session:
    """One connection of a rider: where it landed, its echoes, how it ended."""

    version: str
    instance: str
    opened: float
    echoes: int = 0
    last_echo: float = 0.0
    closed: float | None = None
    code: int | None = None  # the close frame received (None: none, a cut connection)
    ended: str = ""  # how, as the client library saw it


@dataclass
class Rider:
    """A client that stays connected, echoing every ``ECHO_EVERY`` s; when the connection
    closes it records how and reconnects at once."""

    plane: DataPlane
    sessions: list[Session] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def ride(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            session: Session | None = None
            try:
                async with ws_connect(self.plane) as ws:
                    version, instance = await hello(ws)
                    session = Session(version, instance, opened=time.monotonic())
                    self.sessions.append(session)
                    self.connected.set()
                    sent = 0
                    while not stop.is_set():
                        await ws.send(f"m{sent}")
                        reply = await asyncio.wait_for(ws.recv(), 10)
                        if reply != f"{version} {instance} m{sent}":
                            self.errors.append(f"echo {reply!r} for m{sent} on {instance}")
                        session.echoes += 1
                        session.last_echo = time.monotonic()
                        sent += 1
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), ECHO_EVERY)
            except ConnectionClosed as exc:
                if session is None:
                    self.errors.append(f"closed before its first echo: {exc!r}")
                else:
                    session.closed = time.monotonic()
                    session.code = exc.rcvd.code if exc.rcvd is not None else None
                    session.ended = repr(exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)

    @property
    def current(self) -> Session:
        return self.sessions[-1]


@dataclass
class Probes:
    """A new WebSocket every 0.2 s: handshake, one echo, a clean close."""

    plane: DataPlane
    served: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                async with ws_connect(self.plane) as ws:
                    version, _instance = await hello(ws)
                self.served.append((began, version))
            except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 0.2 - (time.monotonic() - began)))


async def watch_instances(
    plane: DataPlane, drained: dict[str, float], stopped: dict[str, float], stop: asyncio.Event
) -> None:
    """When each instance was first seen draining (out of the route) and told to stop."""
    async with plane.operator.client() as api:
        while not stop.is_set():
            now = time.monotonic()
            status = (await api.get(f"/api/v1/projects/{plane.app}/status")).json()
            for instance in status["instances"]:
                name = instance_hostname(instance["id"])
                if instance["draining"]:
                    drained.setdefault(name, now)
                if instance["desired_state"] != "running" or instance["state"] in (
                    "stopping",
                    "stopped",
                    "terminated",
                ):
                    stopped.setdefault(name, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_websockets_ride_a_rolling_release_get_going_away_and_reconnect_to_it(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    migrated_database: str,
    tmp_path: Path,
) -> None:
    image = build_ws_image(tmp_path / "ws.tar")
    lb_env = {"LB_TUNNEL_DRAIN_TIMEOUT": str(TUNNEL_DRAIN)}
    async with data_plane(lan, hosts, migrated_database, tmp_path, lb_env=lb_env) as plane:
        app = plane.app
        strategy = {**STRATEGY, "drain_timeout": DRAIN}
        resources = {"vcpu": 0.5, "memory": 128}
        image_id = await import_image(plane.operator, image.path, "ws")
        async with plane.operator.client() as api:
            await deploy(
                api, app, image_id, replicas=2, env={"APP_VERSION": "v1"},
                strategy=strategy, resources=resources,
            )  # fmt: skip
            assert (await settled(api, app, 1))["state"] == "active"
            status = await only_version_running(api, app, 1, 2)
            v1 = {instance_hostname(i["id"]) for i in status["instances"] if i["version"] == 1}

        # the edge and the balancer learn the domain and the route
        deadline = time.monotonic() + 20
        while True:
            try:
                async with ws_connect(plane) as ws:
                    assert (await hello(ws))[0] == "v1"
                break
            except (OSError, TimeoutError, WebSocketException) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no WebSocket through the edge: {exc!r}") from exc
                await asyncio.sleep(0.2)

        stop_riders, stop_rest = asyncio.Event(), asyncio.Event()
        riders = [Rider(plane) for _ in range(CLIENTS)]
        tasks: list[asyncio.Task[None]] = []
        for rider in riders:  # one after the other: round-robin spreads them over both
            tasks.append(asyncio.create_task(rider.ride(stop_riders)))
            await asyncio.wait_for(rider.connected.wait(), 15)
        probes = Probes(plane)
        drained: dict[str, float] = {}
        stopped: dict[str, float] = {}
        tasks += [
            asyncio.create_task(probes.run(stop_rest)),
            asyncio.create_task(watch_instances(plane, drained, stopped, stop_rest)),
        ]
        load = Load(plane.edge.port, plane.domain)
        load.start()
        try:
            first = [rider.current for rider in riders]
            assert {s.version for s in first} == {"v1"}
            assert {s.instance for s in first} == v1  # both v1 instances hold riders

            released = time.monotonic()
            async with plane.operator.client() as api:
                await deploy(api, app, image_id, env={"APP_VERSION": "v2"}, strategy=strategy)
                assert (await settled(api, app, 2))["state"] == "active"
                # every rider closed by 1001 and reconnected, until it is on v2
                await until(
                    lambda: all(r.current.version == "v2" for r in riders),
                    "every rider on v2",
                    timeout=DRAIN + 20,
                )
                await only_version_running(api, app, 2, 2, timeout=DRAIN + 20)
            all_on_v2 = time.monotonic()
            await asyncio.sleep(1.0)  # the riders and probes go on a moment on v2 alone
        finally:
            stop_riders.set()
            stop_rest.set()
            await asyncio.gather(*tasks)
            await load.stop()

    assert [e for r in riders for e in r.errors] == []
    assert set(drained) >= v1 and set(stopped) >= v1, (drained, stopped)
    old = [s for r in riders for s in r.sessions if s.version == "v1"]
    assert {s.code for s in old} == {1001}, [(s.instance, s.ended) for s in old]
    until_1001 = []
    for session in old:
        assert session.closed is not None
        left = drained[session.instance]
        lasted = session.closed - left
        until_1001.append(lasted)
        # open through the tunnel drain timeout, closed before the instance was stopped
        assert TUNNEL_DRAIN - 1.0 <= lasted <= TUNNEL_DRAIN + LATE + CLOSE_WAIT, lasted
        assert session.closed < stopped[session.instance], session
        assert session.closed - left < DRAIN
        # and it kept echoing while its instance drained
        assert session.last_echo >= left + TUNNEL_DRAIN - 1.0, (session, left)
    # each close was followed at once by a reconnect; once v1 was out, to v2
    reconnects = []
    for rider in riders:
        for before, after in zip(rider.sessions, rider.sessions[1:], strict=False):
            assert before.closed is not None
            reconnects.append(after.opened - before.closed)
        assert rider.current.version == "v2" and rider.current.closed is None
        for session in rider.sessions:
            if session.opened > max(drained[name] for name in v1) + LATE:
                assert session.version == "v2", rider.sessions
    assert max(reconnects) < 3.0, reconnects
    # new connections during the rollout: every handshake and echo succeeded
    assert probes.failures == [], probes.failures[:10]
    during = [version for at, version in probes.served if released <= at <= all_on_v2]
    assert len(during) >= 20 and set(during) <= {"v1", "v2"}, probes.served
    assert probes.served[-1][1] == "v2"
    # plain HTTP beside them
    assert load.failures == [], load.failures[:20]
    assert load.count_since(released) >= 100
    print(
        f"\n{CLIENTS} riders, {len(old)} v1 connections closed with 1001 "
        f"{min(until_1001):.2f}-{max(until_1001):.2f} s after their instance left the route "
        f"(median {statistics.median(until_1001):.2f}; tunnel drain {TUNNEL_DRAIN} s); "
        f"reconnected in {min(reconnects) * 1000:.0f}-{max(reconnects) * 1000:.0f} ms "
        f"(median {statistics.median(reconnects) * 1000:.0f}); "
        f"rollout to all riders on v2 {all_on_v2 - released:.1f} s; "
        f"{len(probes.served)} new WebSockets, 0 failed; {len(load.answers)} HTTP answers, 0 failed"
    )
