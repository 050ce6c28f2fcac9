"""Pushing a load balancer's request totals to the operator (``proxy`` token).

``POST /api/v1/proxies/stats`` with ``ProxyStatsPush``: its id and its ``/stats/routes``.
"""

from __future__ import annotations

from typing import Any

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status


class ProxyStatsClient:
    """One small pooled HTTP client for the balancer's lifetime."""

    def __init__(
        self, *, base_url: str, token: str, connect_timeout: float = 3.0, timeout: float = 10.0
    ) -> None:
        self._http = http_client(
            ClientOptions(
                base_url=base_url,
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=timeout,
                max_connections=1,
            )
        )

    async def push(self, *, lb_id: str, stats: dict[str, Any]) -> None:
        """Send one snapshot; errors as ``zeitwork.core.errors`` exceptions."""
        with map_http_errors("operator"):
            response = await self._http.post(
                "/api/v1/proxies/stats", json={"lb_id": lb_id, "stats": stats}
            )
        raise_for_status(response)

    async def aclose(self) -> None:
        await self._http.aclose()
