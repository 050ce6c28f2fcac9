"""Linux bridges for root tests: ``linux_bridge(name, gateway=...)`` adds one (up, with a
gateway address if asked) and deletes it when the ``with`` block ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def linux_bridge(name: str, *, gateway: str | None = None) -> Iterator[str]:
    """The bridge ``name``, up, with ``gateway``/24 on it when given; yields its name."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        index = ipr.link_lookup(ifname=name)[0]
        if gateway is not None:
            ipr.addr("add", index=index, address=gateway, prefixlen=24)
        ipr.link("set", index=index, state="up")
    try:
        yield name
    finally:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=name):
                ipr.link("del", ifname=name)
