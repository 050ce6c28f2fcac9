"""Log set-up: an exception's traceback never carries the values of local variables
(tokens, environment variables of instances, ...), in any environment."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from zeitwork.observability.logging import configure_logging

SECRET = "zw_do-not-log-me-4a1f9c"


def _fail_with_a_secret_in_scope() -> None:
    token = SECRET
    raise RuntimeError("refused " + str(len(token)))


@pytest.mark.parametrize("environment", ["development", "staging", "production"])
def test_tracebacks_carry_no_local_values(
    environment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        configure_logging(service="test", environment=environment)
        log = structlog.get_logger("test")
        try:
            _fail_with_a_secret_in_scope()
        except RuntimeError:
            log.exception("thing.failed")
        try:
            _fail_with_a_secret_in_scope()
        except RuntimeError:
            # a library's stdlib logger (the root handler renders it)
            logging.getLogger("zeitwork.test.stdlib").exception("Exception in ASGI application")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
    err = capsys.readouterr().err
    assert "thing.failed" in err and "Exception in ASGI application" in err
    assert "RuntimeError" in err  # the traceback itself is still there
    assert SECRET not in err


def _log_two_failures(environment: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    # an earlier test's uvicorn.Config with its default log config gives the "uvicorn"
    # logger its own handler and stops propagation; the services pass log_config=None, so
    # here too the record must reach the root handler
    uvicorn_logger = logging.getLogger("uvicorn")
    saved_uvicorn = uvicorn_logger.handlers[:], uvicorn_logger.propagate
    uvicorn_logger.handlers[:], uvicorn_logger.propagate = [], True
    try:
        configure_logging(service="test", environment=environment)
        log = structlog.get_logger("test")
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("thing.failed", thing_id=7)
        try:
            _fail_with_a_secret_in_scope()
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
        uvicorn_logger.handlers[:], uvicorn_logger.propagate = saved_uvicorn
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_outside_development_an_exception_is_part_of_one_line(
    environment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _log_two_failures(environment, capsys)
    assert len(lines) == 2, lines
    assert "thing.failed" in lines[0] and "ValueError: bad" in lines[0]
    assert "Exception in ASGI application" in lines[1] and "RuntimeError" in lines[1]
    assert all("\x1b[" not in line for line in lines)  # no colours off a terminal
    if environment == "production":
        event = json.loads(lines[0])
        assert event["event"] == "thing.failed" and event["thing_id"] == 7
        assert "ValueError: bad" in event["exception"]
        assert json.loads(lines[1])["level"] == "error"
    else:
        assert "exception='ValueError: bad value (at test_logging.py:" in lines[0]
        assert "(at test_logging.py:" in lines[1]


def test_development_off_a_terminal_has_no_colours(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _log_two_failures("development", capsys)
    assert any("Traceback" in line for line in lines)  # the full traceback, in development
    assert all("\x1b[" not in line for line in lines)
