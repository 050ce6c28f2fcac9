"""A runtime driver for tests, without root: each "instance" is an asyncio task in this
process, optionally with a real TCP/HTTP listener, so the supervisor, health checks and
release logic run against real sockets.

The workload is chosen by ``argv`` (the image is not looked at):

- ``serve [STATUS]``: listen on the instance's address and port and answer every HTTP
  request with STATUS (default 200) and the body ``$BODY`` (default ``hello from
  zeitwork``); SIGTERM ends it with exit code 0.
- ``sleep``: run without listening (an app that never listens); it ignores SIGTERM, so
  a stop ends in SIGKILL (exit code 137).
- ``exit CODE``: exit with CODE right after the start.
- ``oom``: be OOM-killed right after the start (exit code 137).
- anything else: the start fails as an exec of a missing program does.

``$SAY``, when set, is written to the instance's log at start. ``LoopbackNetwork`` hands out
addresses in 127.0.0.0/8 (all local on Linux), so each instance listens on its own address
and the assigned port, as on a bridge. Tests steer a running instance through its
``FakeHost`` (``answer_with``, ``cut_network``, ``exit``). Several drivers over one host
are agents on one machine: each owns (and recovers, and cleans) only what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.base import (
    DriverKind,
    Handle,
    InstanceSpec,
    NetworkAttachment,
    Phase,
    Recovered,
    Status,
)

DEFAULT_BODY = "hello from zeitwork\n"
PROGRAMS = ("serve", "sleep", "exit", "oom")
_pids = itertools.count(200_000)


@dataclass
class Workload:
    """One fake instance's process as the fake host sees it."""

    instance_id: uuid.UUID
    owner: str
    pid: int
    program: str
    status: int = 200
    body: str = DEFAULT_BODY
    address: str = "127.0.0.1"
    port: int = 0
    lines: list[str] = field(default_factory=list)
    exit_code: int | None = None
    oom_killed: bool = False
    server: asyncio.Server | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.changed.set()

    def end(self, code: int, *, oom: bool = False) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.oom_killed = oom
        if self.server is not None:
            self.server.close()
            self.server = None
        self.changed.set()


class FakeHost:
    """The machine the fake drivers run on: every workload, whoever started it."""

    def __init__(self) -> None:
        self.workloads: dict[uuid.UUID, Workload] = {}

    def workload(self, instance_id: uuid.UUID) -> Workload:
        return self.workloads[instance_id]

    def answer_with(self, instance_id: uuid.UUID, status: int) -> None:
        """From now on the instance answers every request with ``status``."""
        self.workloads[instance_id].status = status

    def cut_network(self, instance_id: uuid.UUID) -> None:
        """The instance keeps running but can no longer be reached (its network is gone)."""
        workload = self.workloads[instance_id]
        if workload.server is not None:
            workload.server.close()
            workload.server = None

    def exit(self, instance_id: uuid.UUID, code: int) -> None:
        """The instance's process exits by itself."""
        self.workloads[instance_id].end(code)

    async def close(self) -> None:
        """The machine goes away: every workload ends, every listener is closed."""
        servers = [w.server for w in self.workloads.values() if w.server is not None]
        for workload in self.workloads.values():
            workload.end(137)
        for server in servers:
            await server.wait_closed()
        self.workloads.clear()


async def _answer(workload: Workload, writer: asyncio.StreamWriter) -> None:
    body = workload.body.encode()
    writer.write(
        f"HTTP/1.1 {workload.status} Fake\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def _listen_on(address: str, port: int) -> tuple[str, int]:
    """The instance's own address and port when it is a loopback one, else 127.0.0.1 on a
    port the kernel picks (the handle's ``address``/``port`` say where)."""
    if ipaddress.ip_address(address).is_loopback:
        return address, port
    return "127.0.0.1", 0


class FakeDriver:
    name: DriverKind = "fake"

    def __init__(self, *, host: FakeHost, owner: str = "fake") -> None:
        self.host = host
        self.owner = owner

    def _handle(self, workload: Workload) -> Handle:
        return Handle(
            instance_id=workload.instance_id,
            driver="fake",
            data={
                "container_id": f"fake-{workload.instance_id.hex}",
                "pid": workload.pid,
                "owner": self.owner,
                "address": workload.address,
                "port": workload.port,
            },
        )

    def _mine(self, handle: Handle) -> Workload | None:
        workload = self.host.workloads.get(handle.instance_id)
        if workload is None or workload.owner != self.owner:
            return None
        if workload.pid != handle.data.get("pid"):
            return None
        return workload

    async def start(self, spec: InstanceSpec) -> Handle:
        existing = self.host.workloads.get(spec.instance_id)
        if existing is not None and existing.owner == self.owner and existing.alive:
            return self._handle(existing)
        argv = list(spec.process.argv)
        program = argv[0] if argv else ""
        if program not in PROGRAMS:
            raise RuntimeFailure(f"exec {program or '(empty argv)'}: no such file or directory")
        workload = Workload(
            instance_id=spec.instance_id,
            owner=self.owner,
            pid=next(_pids),
            program=program,
            body=spec.process.env.get("BODY", DEFAULT_BODY),
            address=spec.network.address,
            port=spec.port,
        )
        try:
            if program == "serve" and len(argv) > 1:
                workload.status = int(argv[1])
            code = int(argv[1]) if program == "exit" else 0
        except (IndexError, ValueError) as exc:
            raise RuntimeFailure(f"{program}: bad argument: {exc}") from exc
        if program == "serve":
            workload.server = await self._serve(workload)
        say = spec.process.env.get("SAY")
        if say:
            workload.write(say)
        self.host.workloads[spec.instance_id] = workload
        if program == "exit":
            workload.end(code)
        elif program == "oom":
            workload.end(137, oom=True)
        return self._handle(workload)

    async def _serve(self, workload: Workload) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                workload.requests += 1
                await _answer(workload, writer)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                pass  # the client went away
            finally:
                writer.close()

        address, port = _listen_on(workload.address, workload.port)
        try:
            server = await asyncio.start_server(handle, address, port)
        except OSError as exc:
            raise RuntimeFailure(f"serve: cannot listen on {address}:{port}: {exc}") from exc
        workload.address, workload.port = server.sockets[0].getsockname()[:2]
        return server

    async def inspect(self, handle: Handle) -> Status:
        workload = self._mine(handle)
        if workload is None:
            return Status(phase=Phase.MISSING)
        if workload.alive:
            return Status(phase=Phase.RUNNING, pid=workload.pid)
        message = "killed by the kernel: out of memory" if workload.oom_killed else None
        return Status(
            phase=Phase.EXITED,
            exit_code=workload.exit_code,
            oom_killed=workload.oom_killed,
            message=message,
        )

    async def stop(self, handle: Handle, *, grace_seconds: float = 10.0) -> Status:
        workload = self._mine(handle)
        if workload is not None and workload.alive:
            if workload.program == "sleep":  # ignores SIGTERM: SIGKILL after the grace time
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._exited(workload), grace_seconds)
                workload.end(137)
            else:
                workload.end(0)
        return await self.inspect(handle)

    @staticmethod
    async def _exited(workload: Workload) -> None:
        while workload.alive:
            workload.changed.clear()
            await workload.changed.wait()

    async def destroy(self, handle: Handle) -> None:
        workload = self._mine(handle)
        if workload is not None:
            workload.end(137)
            del self.host.workloads[handle.instance_id]

    async def logs(
        self, handle: Handle, *, tail: int = 100, follow: bool = False
    ) -> AsyncIterator[str]:
        workload = self._mine(handle)
        if workload is None:
            return
        start = max(0, len(workload.lines) - tail) if tail else len(workload.lines)
        for line in workload.lines[start:]:
            yield line
        position = len(workload.lines)
        while follow:
            if position < len(workload.lines):
                for line in workload.lines[position:]:
                    yield line
                position = len(workload.lines)
                continue
            if not workload.alive:
                return
            workload.changed.clear()
            await workload.changed.wait()

    async def recover(self, handles: Sequence[Handle]) -> Recovered:
        running: list[Handle] = []
        cleaned: list[str] = []
        kept: set[uuid.UUID] = set()
        for handle in handles:
            workload = self._mine(handle)
            if workload is not None and workload.alive:
                running.append(handle)
                kept.add(handle.instance_id)
                continue
            if workload is not None:
                await self.destroy(handle)
                cleaned.append(f"container fake-{handle.instance_id.hex} (no longer running)")
        for instance_id, workload in sorted(self.host.workloads.items()):
            if workload.owner == self.owner and instance_id not in kept:
                workload.end(137)
                del self.host.workloads[instance_id]
                cleaned.append(f"container fake-{instance_id.hex} (unknown to the agent)")
        return Recovered(running=running, cleaned=sorted(cleaned))


class LoopbackNetwork:
    """Instance addresses without root: one per instance in a 127.x.y.0/24 (all of
    127.0.0.0/8 is local on Linux), each instance listening on its own address."""

    def __init__(self, *, subnet: str = "127.77.0.0/24", bridge: str = "fake0") -> None:
        self.bridge = bridge
        self.subnet = subnet
        network = ipaddress.IPv4Network(subnet)
        if not network.is_loopback:
            raise ValueError(f"{subnet} is not a loopback subnet")
        self._network = network
        self.gateway = str(network.network_address + 1)
        self.allocations: dict[uuid.UUID, str] = {}
        self.detached: list[uuid.UUID] = []

    def attachment(self, instance_id: uuid.UUID) -> NetworkAttachment | None:
        address = self.allocations.get(instance_id)
        if address is None:
            return None
        return NetworkAttachment(
            bridge=self.bridge,
            address=address,
            prefix_len=self._network.prefixlen,
            gateway=self.gateway,
            netns=str(Path("/nonexistent/fake-netns") / instance_id.hex),
        )

    async def attach(self, instance_id: uuid.UUID) -> NetworkAttachment:
        if instance_id not in self.allocations:
            used = set(self.allocations.values()) | {self.gateway}
            for candidate in list(self._network.hosts())[1:]:
                if str(candidate) not in used:
                    self.allocations[instance_id] = str(candidate)
                    break
            else:
                raise RuntimeFailure(f"no free address left in {self.subnet}")
        attachment = self.attachment(instance_id)
        assert attachment is not None
        return attachment

    async def detach(self, instance_id: uuid.UUID) -> None:
        if self.allocations.pop(instance_id, None) is not None:
            self.detached.append(instance_id)

    async def cleanup(self, *, keep: set[uuid.UUID]) -> list[str]:
        cleaned = []
        for instance_id in sorted(set(self.allocations) - keep):
            del self.allocations[instance_id]
            cleaned.append(f"address of {instance_id}")
        return cleaned
