"""The operator's route table for load balancers and edges (``proxy`` token).

``GET /api/v1/routes?version=V&wait=S`` answers at once when the table's version differs
from V, else when it changes or after S seconds (long-poll; S <= 60).
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.core.errors import ServiceUnavailable
from zeitwork.wire.routes import RouteTable


class RoutesClient:
    """Typed client of the routes endpoint; one pooled HTTP client for its lifetime."""

    def __init__(self, *, base_url: str, token: str, connect_timeout: float = 3.0) -> None:
        # the read timeout must outlast the longest long-poll
        self._http: httpx.AsyncClient = http_client(
            ClientOptions(
                base_url=base_url,
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=75.0,
                max_connections=2,
            )
        )

    async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable:
        """The current table; with ``version`` and ``wait``, wait up to ``wait`` s for a change."""
        params: dict[str, str] = {}
        if version is not None:
            params["version"] = str(version)
            if wait > 0:
                params["wait"] = str(int(wait))
        with map_http_errors("operator"):
            response = await self._http.get(
                "/api/v1/routes", params=params, timeout=httpx.Timeout(wait + 15.0, connect=3.0)
            )
        raise_for_status(response)
        try:
            return RouteTable.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"operator sent an invalid route table: {exc}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()
