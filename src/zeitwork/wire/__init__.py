"""Pydantic models that cross a process boundary."""

from __future__ import annotations

from zeitwork.wire.problem import PROBLEM_CONTENT_TYPE, FieldError, Problem

__all__ = ["PROBLEM_CONTENT_TYPE", "FieldError", "Problem"]
