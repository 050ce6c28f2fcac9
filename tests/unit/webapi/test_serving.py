from __future__ import annotations

import socket

import pytest

from zeitwork.webapi.serving import listen_tcp


def test_listen_tcp_sets_nodelay_and_is_non_blocking() -> None:
    sock = listen_tcp("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getblocking() is False
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_listen_tcp_on_a_taken_port_raises_and_leaks_nothing() -> None:
    first = listen_tcp("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            listen_tcp("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_reuseport_lets_two_workers_share_a_port() -> None:
    first = listen_tcp("127.0.0.1", 0, reuseport=True)
    try:
        second = listen_tcp("127.0.0.1", first.getsockname()[1], reuseport=True)
        second.close()
    finally:
        first.close()
