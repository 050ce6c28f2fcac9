"""Every outbound HTTP call of Zeitwork goes through this package."""

from __future__ import annotations

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors

__all__ = ["ClientOptions", "http_client", "map_http_errors"]
