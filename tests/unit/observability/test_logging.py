"""Log set-up: an exception's traceback never carries the values of local variables
(tokens, environment variables of instances, ...), in any environment."""

from __future__ import annotations

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
