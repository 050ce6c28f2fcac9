from __future__ import annotations

import zeitwork.proxy as proxy


def test_public_surface_is_sorted_and_importable() -> None:
    assert proxy.__all__ == sorted(proxy.__all__, key=lambda n: (not n.isupper(), n))
    for name in proxy.__all__:
        assert hasattr(proxy, name), name


def test_the_edge_seam_names_stay_available() -> None:
    for name in (
        "Proxy",
        "ProxyConfig",
        "Router",
        "RequestPolicy",
        "RequestHead",
        "ClientInfo",
        "LocalResponse",
        "ConnectionLimiter",
        "Observer",
        "Pool",
        "Backend",
        "TrustedProxies",
        "reuse_port_socket",
    ):
        assert name in proxy.__all__
