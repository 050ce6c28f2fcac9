"""The edge engine's protocol factories make one client protocol per connection, and what they
make is freed once dropped. (Compiled, an edge protocol class called as a Python object ran
its ``__init__`` twice; the first run's HTTP parser, which refers back to the protocol, was
never freed, and with it every plain-HTTP connection. The compiled-wheel suite runs this.)"""

from __future__ import annotations

import gc

import pytest

from zeitwork.edge.engine import EdgeProxy, SinglePool
from zeitwork.edge.metrics import HandshakeCounter
from zeitwork.proxy.backends import Pool


def _parsers() -> int:
    return sum(type(o).__name__ == "HttpRequestParser" for o in gc.get_objects())


@pytest.mark.parametrize(
    ("tls", "proxy_protocol"),
    [(False, False), (False, True), (True, False)],
    ids=["plain", "proxy-protocol", "https"],
)
def test_each_protocol_has_one_parser_and_is_freed(tls: bool, proxy_protocol: bool) -> None:
    proxy = EdgeProxy(
        handshakes=HandshakeCounter(),
        router=SinglePool(Pool("lb")),
        proxy_protocol=proxy_protocol,
    )
    make = proxy.protocol_factory(tls=tls)
    gc.collect()
    before = _parsers()
    protocols = [make() for _ in range(20)]
    assert _parsers() == before + 20  # one parser each
    assert all(p.tls is tls for p in protocols)
    del protocols
    gc.collect()
    assert _parsers() == before
