"""The ``zeitwork`` command."""

from __future__ import annotations

from zeitwork.cli.main import app, main

__all__ = ["app", "main"]
