"""One problem vocabulary: the operator's errors, the proxy core's answers (load balancer
and edge) and the edge's own answers all use the types of ``core.problems``."""

from __future__ import annotations

import json

import pytest

from zeitwork.core import errors, problems
from zeitwork.edge.policy import error_response
from zeitwork.proxy.headers import problem_body
from zeitwork.webapi.problems import STATUS_BY_ERROR, status_for


def _subclasses(cls: type[errors.ZeitworkError]) -> list[type[errors.ZeitworkError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_codes_are_unique_and_defaults_are_the_first_listed() -> None:
    codes = [p.code for p in problems.ALL]
    assert len(codes) == len(set(codes))
    assert problems.for_status(503) is problems.SERVICE_UNAVAILABLE
    assert problems.for_status(400) is problems.BAD_REQUEST
    assert problems.for_status(409) is problems.CONFLICT
    assert problems.for_status(418).code == "client-error"
    assert problems.for_status(599).code == "server-error"


def test_every_core_error_has_a_vocabulary_type_with_its_status() -> None:
    by_code = {p.code: p for p in problems.ALL}
    for cls in [errors.ZeitworkError, *_subclasses(errors.ZeitworkError)]:
        if cls.__module__ != errors.__name__:
            continue  # a service's start-up errors never reach a client
        kind = by_code[cls.code]
        assert cls.title == kind.title
        assert status_for(cls("x")) == kind.status, cls
    assert {cls for cls, _ in STATUS_BY_ERROR} <= set(_subclasses(errors.ZeitworkError))


@pytest.mark.parametrize("status", [400, 404, 408, 413, 429, 431, 502, 503, 504])
def test_the_proxy_core_and_the_edge_answer_with_the_same_types(status: int) -> None:
    core = json.loads(problem_body(status, "why"))
    assert core == {
        "type": problems.for_status(status).uri,
        "title": problems.for_status(status).title,
        "status": status,
        "detail": "why",
    }
    edge = error_response(status, "why", [(b"accept", b"application/json")])
    assert json.loads(edge.body) == core
    page = error_response(status, "why", [(b"accept", b"text/html")])
    assert page.body.startswith(b"<!doctype html>") or b"<html" in page.body


def test_a_503_reads_the_same_from_the_operator_and_the_data_plane() -> None:
    assert (
        errors.ServiceUnavailable.code
        == json.loads(problem_body(503, "x"))["type"].rsplit("/", 1)[1]
    )
