"""Handing the listening ports to a successor on SIGTERM: a restart or an upgrade that
refuses no connection (the edge and the load balancer).

Every listening socket of a service has SO_REUSEPORT, so a second process (the new version,
or the same one restarted) can listen on the same ports while the first still runs; the
kernel then spreads new connections over both. On SIGTERM the old process looks for such a
successor (``EDGE_HANDOFF_TIMEOUT`` / ``LB_HANDOFF_TIMEOUT`` seconds at most, in
/proc/net/tcp: a listening socket on the same address and port that is not one of its own
generation's). When one listens on every port, the old process attaches a reuseport program
that sends every new connection to the successor's sockets (``steering.handoff_program``),
keeps accepting until its own accept queues are empty, and only then closes its listeners
and drains. Closing a listener with connections still queued on it would reset them (unless
``net.ipv4.tcp_migrate_req`` is set). Without a successor it closes at once.

With several workers, the supervisor makes every worker's sockets before forking, in worker
order (a group numbers its sockets in the order they started listening), and holds its
copies until the workers are gone (``close_generation``).

The table parsing is pure (``listeners``); ``Handoff`` reads the tables (off the event loop)
and attaches the program; ``hand_off`` is one worker's whole part, ``wait_predecessor_gone``
the successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zeitwork.serving.steering import attach, handoff_program

_LISTEN = "0A"
_QUEUE_WAIT = 1.0  # at most this long for the accept queues to empty after steering away


@dataclass(frozen=True, slots=True)
class Listener:
    address: str  # as the table spells it: hex address and port, e.g. 0100007F:1F90
    inode: int
    queued: int  # connections in the accept queue


def listeners(table: str, port: int) -> list[Listener]:
    """The listening sockets on ``port`` in a /proc/net/tcp or tcp6 table."""
    found: list[Listener] = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        address = fields[1]
        _, _, hex_port = address.rpartition(":")
        try:
            if int(hex_port, 16) != port:
                continue
            queued = int(fields[4].partition(":")[2], 16)
            found.append(Listener(address=address, inode=int(fields[9]), queued=queued))
        except ValueError:
            continue
    return found


def group_split(table: Iterable[Listener], *, own: frozenset[int], inode: int) -> tuple[int, int]:
    """(sockets of ``own``, others) listening on the same address as socket ``inode``."""
    rows = list(table)
    mine = next((row for row in rows if row.inode == inode), None)
    if mine is None:
        return 0, 0
    same = [row for row in rows if row.address == mine.address]
    ours = sum(1 for row in same if row.inode in own)
    return ours, len(same) - ours


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _read_table(family: int) -> str:
    name = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    with open(name, encoding="ascii") as handle:
        return handle.read()


class Handoff:
    """One worker's part of a handoff: its listening ``socks``; ``own`` is the inodes of
    every listening socket of this process's generation (all workers')."""

    def __init__(
        self,
        *,
        socks: Sequence[socket.socket],
        own: frozenset[int],
        read_table: Callable[[int], str] = _read_table,
    ) -> None:
        self.socks = [sock for sock in socks if sock.fileno() >= 0]
        self.inodes = [socket_inode(sock) for sock in self.socks]
        self.own = own | frozenset(self.inodes)
        self.read_table = read_table

    async def _tables(self) -> list[list[Listener]]:
        out: list[list[Listener]] = []
        for sock in self.socks:
            table = await asyncio.to_thread(self.read_table, sock.family)
            out.append(listeners(table, sock.getsockname()[1]))
        return out

    async def find_successor(self, wait: float) -> list[tuple[int, int]] | None:
        """Per listening socket, (this generation's sockets, the successor's) in its group,
        once a successor listens on every port (polled every 0.1 s for up to ``wait``
        s); None when none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            tables = await self._tables()
            split = [
                group_split(rows, own=self.own, inode=inode)
                for rows, inode in zip(tables, self.inodes, strict=True)
            ]
            if split and all(others for _, others in split):
                return split
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.1)

    async def foreign(self) -> list[int]:
        """Per listening socket, how many others (not of this generation) share its group."""
        tables = await self._tables()
        return [
            group_split(rows, own=self.own, inode=inode)[1]
            for rows, inode in zip(tables, self.inodes, strict=True)
        ]

    def steer_away(self, split: Sequence[tuple[int, int]]) -> None:
        """New connections go to the successor's sockets, which follow this generation's
        in each SO_REUSEPORT group (a group numbers its sockets in the order they joined)."""
        for sock, (ours, others) in zip(self.socks, split, strict=True):
            attach(sock, handoff_program(ours, others))

    async def wait_accepted(self) -> int:
        """Poll until this worker's accept queues are empty (at most 1 s); the number of
        connections still queued when it gave up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _QUEUE_WAIT
        while True:
            await asyncio.sleep(0.05)  # requests in their TCP handshake finish meanwhile
            tables = await self._tables()
            queued = sum(
                row.queued
                for rows, inode in zip(tables, self.inodes, strict=True)
                for row in rows
                if row.inode == inode
            )
            if queued == 0 or loop.time() >= deadline:
                return queued


def close_generation(socks: Sequence[socket.socket], *, own: frozenset[int]) -> None:
    """Close one port's listening sockets of this generation, which the worker supervisor
    holds until its workers have handed off and exited, so that the SO_REUSEPORT group is
    not renumbered while they finish. ``socks`` are in group order (worker order, made before
    any successor's).

    Closing a socket moves the group's last socket into its place, so they are closed from
    the highest index down, and around each close the program names successor sockets only:
    before it, those whose place the close does not change (when there are two or more);
    after it, all of them in their new places. (A socket a worker shut down because no
    successor came has left the group already.)"""
    live = [sock for sock in socks if sock.fileno() >= 0]
    if not live:
        return
    rows = listeners(_read_table(live[0].family), live[0].getsockname()[1])
    listening = {row.inode for row in rows}
    live = [sock for sock in live if socket_inode(sock) in listening] or live
    _, others = group_split(rows, own=own, inode=socket_inode(live[0]))
    for k in range(len(live) - 1, -1, -1):
        if others >= 2:
            with contextlib.suppress(OSError):
                attach(live[k], handoff_program(k + 1, others - 1))
        live[k].close()
        if others and k > 0:
            with contextlib.suppress(OSError):
                attach(live[k - 1], handoff_program(k, others))
    for sock in socks:
        sock.close()


@dataclass(frozen=True, slots=True)
class HandoffOutcome:
    """How one worker's handoff went: ``successor`` is, per socket, (this generation's
    sockets, the successor's) in its group, None when none came (or steering failed:
    ``error``); ``queued``, connections still queued when it stopped waiting for them."""

    successor: list[tuple[int, int]] | None
    queued: int = 0
    error: str | None = None


async def hand_off(
    socks: Sequence[socket.socket], *, own: frozenset[int], wait: float, shared: bool
) -> HandoffOutcome:
    """SIGTERM, before the listeners close: wait up to ``wait`` s for a successor listening
    on every port of ``socks`` and steer new connections to it, then wait for this worker's
    accept queues to empty. Without one (or when the kernel refuses the program) new
    connections are refused from now on: ``shared`` says a supervisor holds copies of the
    sockets, and then they are shut down (which ends their listening whoever holds them);
    otherwise closing them (the drain) is enough."""
    handoff = Handoff(socks=socks, own=own)
    split = await handoff.find_successor(wait)
    if split is None:
        stop_listening(socks, shared=shared)
        return HandoffOutcome(successor=None)
    try:
        handoff.steer_away(split)
    except OSError as exc:
        stop_listening(socks, shared=shared)
        return HandoffOutcome(successor=None, error=str(exc))
    return HandoffOutcome(successor=split, queued=await handoff.wait_accepted())


SETTLE = 0.2  # s between "close after the next response" and closing idle connections


class _Draining(Protocol):
    draining: bool
    servers: list[asyncio.Server]


async def settle(proxy: _Draining, seconds: float = SETTLE) -> None:
    """Before the drain: stop accepting, and every response says ``Connection: close``
    from now on, so a busy keep-alive connection ends after its next response, cleanly,
    and a connection accepted last gets its request read. The drain then closes connections
    idle at that instant; a client that had just sent a request on one would meet the
    close, which is what clients that reuse connections without pause (wrk, a pool under
    load) would otherwise meet on every connection."""
    for server in proxy.servers:
        server.close()
    proxy.draining = True
    await asyncio.sleep(seconds)


def stop_listening(socks: Sequence[socket.socket], *, shared: bool) -> None:
    if not shared:
        return
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


async def wait_predecessor_gone(
    socks: Sequence[socket.socket], *, own: frozenset[int], poll: float = 0.5
) -> bool:
    """A process started beside a predecessor (a handoff): wait until no listening socket
    of another generation shares a group with ``socks``. The predecessor's last program
    still steers then (by source address over this generation's sockets): the caller puts
    its own steering back. False when there was no predecessor (a plain start)."""
    handoff = Handoff(socks=socks, own=own)
    if not any(await handoff.foreign()):
        return False
    while True:  # /proc is the only news of the predecessor's going: poll it
        await asyncio.sleep(poll)
        if not any(await handoff.foreign()):
            return True
