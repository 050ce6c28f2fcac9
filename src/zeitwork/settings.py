"""Shared configuration base: every service's settings class derives from ``ServiceSettings``.

Configuration enters once, typed, at start-up (``load_settings``). A bad value is one line
on stderr naming the variable and what it allows, and exit status 2. Nothing else in the
code base reads ``os.environ``.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceEnvironment(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "zeitwork"


class ServiceSettings(BaseSettings):
    """Variables every service reads. Subclasses set their own ``port`` default."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    port: int = Field(default=8080, ge=0, le=65535, validation_alias="PORT")
    host: str = Field(default="0.0.0.0", validation_alias="HOST")
    log_level: LogLevel = Field(default=LogLevel.INFO, validation_alias="LOG_LEVEL")
    environment: ServiceEnvironment = Field(
        default=ServiceEnvironment.DEVELOPMENT, validation_alias="ENVIRONMENT"
    )
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias="ZEITWORK_DATA_DIR")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value == "warning":
                return "warn"
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _lower_env(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            aliases = {"dev": "development", "prod": "production"}
            return aliases.get(value, value)
        return value


class SettingsError(Exception):
    """Configuration is invalid; ``str(exc)`` is the one line shown to the user."""


_S = TypeVar("_S", bound=BaseSettings)


def _describe(cls: type[BaseSettings], error: Any) -> str:
    loc = error.get("loc") or ()
    field_name = str(loc[0]) if loc else "?"
    info = cls.model_fields.get(field_name)
    alias = info.validation_alias if info is not None else None
    variable = alias if isinstance(alias, str) else field_name.upper()
    message = str(error.get("msg", "invalid value"))
    ctx = error.get("ctx") or {}
    expected = ctx.get("expected")
    got = error.get("input")
    text = f"invalid value for {variable}"
    if got is not None and not isinstance(got, dict):
        text += f" ({got!r})"
    text += f": {expected if expected else message}"
    return text


def parse_settings(cls: type[_S], **overrides: Any) -> _S:
    """Build settings from the environment, raising SettingsError with one line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SettingsError(_describe(cls, first)) from exc


def load_settings(cls: type[_S], **overrides: Any) -> _S:
    """Build settings for an entrypoint: on a bad value print one line and exit 2."""
    try:
        return parse_settings(cls, **overrides)
    except SettingsError as exc:
        print(f"zeitwork: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
