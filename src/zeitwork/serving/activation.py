"""systemd socket activation: the listening sockets a ``.socket`` unit passed.

systemd opens the sockets, keeps them open across restarts of the service, and passes
them from file descriptor 3 on, naming their number in ``LISTEN_FDS`` and the process
meant in ``LISTEN_PID``. A service that uses them refuses no connection while it restarts:
connections wait in the socket's queue until the next process accepts them (sd_listen_fds(3)).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets passed to this process (none unless ``LISTEN_PID`` names it). The
    variables are removed so that no child process takes them for its own."""
    env = os.environ if environ is None else environ
    meant = env.get("LISTEN_PID", "")
    count = env.get("LISTEN_FDS", "")
    for name in _VARIABLES:
        env.pop(name, None)
    if meant != str(os.getpid()) or not count.isdigit():
        return []
    socks: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        socks.append(sock)
    return socks
