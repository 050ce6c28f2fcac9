"""RFC 9457 problem details, the error body of every Zeitwork HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://zeitwork.dev/problems/"


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
