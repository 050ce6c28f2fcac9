"""Steering each client address to one worker of a SO_REUSEPORT group.

The kernel spreads a port's new connections over the sockets of its SO_REUSEPORT group by a
hash of the whole 4-tuple, so with several edge workers one client's connections land on
all of them, and each worker's rate limit and per-address connection cap see only a share
of that client. A classic BPF program attached to the group (``SO_ATTACH_REUSEPORT_CBPF``,
no privilege needed) picks the socket from the source address instead: IPv4 address, or
the last 32 bits of an IPv6 one, modulo the number of workers. Every connection of an
address then reaches the same worker, and its limits are exact, as with one worker.

The program's answer is an index into the group, which is the order the sockets started
listening: the supervisor creates every worker's sockets, in worker order, before forking
(``serve_workers``), so index i is worker i on every port and one address meets the same
worker over HTTP and HTTPS.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # loads relative to the network header
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20  # BPF_LD | BPF_B/BPF_W | BPF_ABS
_RSH_K, _MOD_K = 0x74, 0x94  # BPF_ALU | BPF_RSH/BPF_MOD | BPF_K
_JEQ_K, _JA = 0x15, 0x05  # BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JA
_RET_A = 0x16  # BPF_RET | BPF_A


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def source_program(groups: int) -> bytes:
    """The filter: the socket index for a packet is its source address modulo ``groups``."""
    if groups < 1:
        raise ValueError("groups must be at least 1")
    return b"".join(
        [
            _insn(_LD_B_ABS, 0, 0, _SKF_NET_OFF + 0),  # version and header length
            _insn(_RSH_K, 0, 0, 4),
            _insn(_JEQ_K, 0, 2, 6),  # IPv6: fall through; IPv4: skip two
            _insn(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 20),  # last 32 bits of the v6 source
            _insn(_JA, 0, 0, 1),
            _insn(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 12),  # the v4 source
            _insn(_MOD_K, 0, 0, groups),
            _insn(_RET_A, 0, 0, 0),
        ]
    )


def steer_by_source(sock: socket.socket, groups: int) -> None:
    """Attach the program to ``sock``'s SO_REUSEPORT group (for every socket of it).
    Raises OSError when the kernel refuses it."""
    attach(sock, source_program(groups))


_ADD_K = 0x04  # BPF_ALU | BPF_ADD | BPF_K


def handoff_program(first: int, groups: int) -> bytes:
    """The filter that sends every new connection to the sockets from index ``first`` on
    (a successor's ``groups`` sockets, by source address as ``source_program``), so that
    the sockets before them get none while they finish their accept queues."""
    if first < 0:
        raise ValueError("first must not be negative")
    steer = source_program(groups)
    return steer[:-8] + _insn(_ADD_K, 0, 0, first) + steer[-8:]


def attach(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF ``program`` to ``sock``'s SO_REUSEPORT group (replacing the
    group's program). Raises OSError when the kernel refuses it."""
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


SO_DETACH_REUSEPORT_BPF = 68  # linux/asm-generic/socket.h


def detach(sock: socket.socket) -> None:
    """Remove the program of ``sock``'s SO_REUSEPORT group (the kernel's hash spreads new
    connections again). Raises OSError when the kernel refuses it."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
