"""Logging and metrics set-up, called by service entrypoints only."""

from __future__ import annotations

from zeitwork.observability.logging import configure_logging, get_logger
from zeitwork.observability.metrics import HttpMetrics, new_registry, render_metrics

__all__ = ["HttpMetrics", "configure_logging", "get_logger", "new_registry", "render_metrics"]
