"""Settings of the user verbs (``zeitwork images``, ``deploy``, ``instances``, ``nodes``):
where the operator is and which admin token to use, read once per command."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zeitwork.settings import default_data_dir


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True, populate_by_name=True
    )

    operator_url: str = Field(default="http://127.0.0.1:8080", validation_alias="OPERATOR_URL")
    token: SecretStr | None = Field(default=None, validation_alias="ZEITWORK_TOKEN")
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias="ZEITWORK_DATA_DIR")

    @field_validator("operator_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin-token"

    def admin_token(self) -> str:
        """ZEITWORK_TOKEN, else the operator's ``$ZEITWORK_DATA_DIR/admin-token``."""
        if self.token is not None and self.token.get_secret_value().strip():
            return self.token.get_secret_value().strip()
        try:
            secret = self.token_file.read_text().strip()
        except FileNotFoundError:
            raise TokenMissing(
                f"no token: set ZEITWORK_TOKEN, or ZEITWORK_DATA_DIR to the operator's data "
                f"directory ({self.token_file} does not exist)"
            ) from None
        except PermissionError:
            raise TokenMissing(
                f"cannot read {self.token_file} (mode 0600, owned by the operator's user): "
                "run as that user or set ZEITWORK_TOKEN"
            ) from None
        if not secret:
            raise TokenMissing(f"{self.token_file} is empty")
        return secret


class TokenMissing(Exception):
    """No admin token can be found; ``str(exc)`` says where to put one."""
