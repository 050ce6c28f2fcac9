"""Serving a FastAPI app the way the operator and the node agent do: uvicorn on a socket the
service made itself (so the port is known and errors are ours), without uvicorn's own signal
handling (each service decides how to drain), and SIGTERM/SIGINT routed to one callback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service stops it (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_tcp(
    host: str, port: int, *, reuseport: bool = False, backlog: int = 512
) -> socket.socket:
    """A non-blocking listening TCP socket; raises OSError when the port cannot be had.

    proto=IPPROTO_TCP so the event loop recognises accepted sockets as TCP and keeps
    TCP_NODELAY on them (set here too; Linux copies it to accepted sockets): without it small
    answers can wait ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuseport:  # several worker processes share the port; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def on_stop_signals(stack: contextlib.AsyncExitStack, callback: Callable[[str], None]) -> None:
    """Call ``callback(signal name)`` on SIGTERM and SIGINT until ``stack`` closes."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback, sig.name)
        stack.callback(loop.remove_signal_handler, sig)
