from __future__ import annotations

import socket
import struct

import pytest

from zeitwork.serving.handoff import (
    Handoff,
    Listener,
    close_generation,
    group_split,
    listeners,
    socket_inode,
)
from zeitwork.serving.steering import attach, detach, handoff_program, source_program

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F93 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 111 1 0
   1: 0100007F:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0
   2: 00000000:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0
   3: 0100007F:1F93 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0
   4: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0
   5: garbage
"""


def test_listeners_on_a_port_with_their_accept_queues() -> None:
    assert listeners(TABLE, 8083) == [
        Listener(address="0100007F:1F93", inode=111, queued=3),
        Listener(address="0100007F:1F93", inode=222, queued=0),
        Listener(address="00000000:1F93", inode=333, queued=0),
    ]  # the established connection (444) and the other port (555) are not listeners
    assert listeners(TABLE, 9999) == []


def test_group_split_counts_the_same_address_only() -> None:
    rows = listeners(TABLE, 8083)
    assert group_split(rows, own=frozenset({111}), inode=111) == (1, 1)  # 333 is 0.0.0.0
    assert group_split(rows, own=frozenset({111, 222}), inode=111) == (2, 0)
    assert group_split(rows, own=frozenset({111}), inode=999) == (0, 0)  # not found


def _run(program: bytes, source: int) -> int:
    """A tiny classic-BPF interpreter for the instructions the steering programs use, on an
    IPv4 header with ``source`` as its source address."""
    packet = struct.pack("!BBHHHBBHII", 0x45, 0, 20, 0, 0, 64, 6, 0, source, 0)
    a, pc = 0, 0
    while True:
        code, jt, jf, k = struct.unpack("HBBI", program[pc * 8 : pc * 8 + 8])
        pc += 1
        offset = k - (1 << 32) + 0x100000 if k >= 1 << 31 else k
        if code == 0x30:
            a = packet[offset]
        elif code == 0x20:
            a = struct.unpack("!I", packet[offset : offset + 4])[0]
        elif code == 0x74:
            a >>= k
        elif code == 0x94:
            a %= k
        elif code == 0x04:
            a += k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x05:
            pc += k
        elif code == 0x16:
            return a
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@pytest.mark.parametrize(("first", "groups"), [(1, 1), (2, 2), (4, 3)])
def test_the_handoff_program_picks_only_the_successors_sockets(first: int, groups: int) -> None:
    program = handoff_program(first, groups)
    for source in (0x7F000001, 0xC0000207, 0x0A000005, 0xFFFFFFFF):
        index = _run(program, source)
        assert first <= index < first + groups
        assert index - first == _run(source_program(groups), source)  # same steering, shifted


def test_the_kernel_takes_the_handoff_program() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        attach(sock, handoff_program(1, 1))  # raises OSError if the kernel refuses it
    finally:
        sock.close()
    with pytest.raises(ValueError):
        handoff_program(-1, 1)


async def test_no_successor_means_none_after_the_wait() -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        handoff = Handoff(socks=[sock], own=frozenset())
        assert await handoff.find_successor(0.0) is None
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(sock.getsockname())
        other.listen()
        try:
            assert await handoff.find_successor(0.0) == [(1, 1)]
            # a socket of this edge's own generation is no successor
            mine = Handoff(socks=[sock], own=frozenset({socket_inode(other)}))
            assert await mine.find_successor(0.0) is None
            assert await handoff.wait_accepted() == 0
        finally:
            other.close()
    finally:
        sock.close()


def _listener(address: tuple[str, int] = ("127.0.0.1", 0)) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen()
    return sock


def test_close_generation_leaves_the_successor_alone_listening() -> None:
    first = _listener()
    second = _listener(first.getsockname())
    successors = [_listener(first.getsockname()) for _ in range(2)]
    port = first.getsockname()[1]
    try:
        own = frozenset({socket_inode(first), socket_inode(second)})
        close_generation([first, second], own=own)
        assert first.fileno() == -1 and second.fileno() == -1
        with open("/proc/net/tcp", encoding="ascii") as table:
            left = {row.inode for row in listeners(table.read(), port)}
        assert left == {socket_inode(s) for s in successors}
        for _ in range(20):  # the program left behind names only live sockets
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        detach(successors[0])  # and the successor can drop it for the kernel's spreading
    finally:
        for sock in successors:
            sock.close()
