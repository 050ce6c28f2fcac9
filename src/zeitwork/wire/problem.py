"""RFC 9457 problem details, the error body of every Zeitwork HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from zeitwork.core.problems import PROBLEM_TYPE_BASE, ProblemType

PROBLEM_CONTENT_TYPE = "application/problem+json"
__all__ = ["PROBLEM_CONTENT_TYPE", "PROBLEM_TYPE_BASE", "FieldError", "Problem"]


class FieldError(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    message: str


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None

    @classmethod
    def of(
        cls, *, code: str, title: str, status: int, detail: str | None = None, **extra: Any
    ) -> Problem:
        return cls(
            type=PROBLEM_TYPE_BASE + code, title=title, status=status, detail=detail, **extra
        )

    @classmethod
    def of_type(cls, kind: ProblemType, *, detail: str | None = None, **extra: Any) -> Problem:
        """A problem of one of the vocabulary's types (``core.problems``)."""
        return cls.of(code=kind.code, title=kind.title, status=kind.status, detail=detail, **extra)
