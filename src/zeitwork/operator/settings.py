"""The operator's configuration, read once at start-up (``load_settings``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from zeitwork.settings import Environment, ServiceSettings

MIB = 1024 * 1024


class OperatorSettings(ServiceSettings):
    """Variables of ``zeitwork operator`` (and of ``migrate`` / ``token``)."""

    port: int = Field(default=8080, ge=0, le=65535, validation_alias="PORT")
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    auto_migrate: bool | None = Field(
        default=None,
        validation_alias="ZEITWORK_AUTO_MIGRATE",
        description="migrate to head on start; default true in development, false otherwise",
    )
    admin_token: SecretStr | None = Field(default=None, validation_alias="ZEITWORK_ADMIN_TOKEN")
    json_max_bytes: int = Field(default=MIB, ge=1024, validation_alias="ZEITWORK_JSON_MAX_BYTES")
    image_max_bytes: int = Field(
        default=2 * 1024 * MIB, ge=MIB, validation_alias="ZEITWORK_IMAGE_MAX_BYTES"
    )
    node_heartbeat_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="ZEITWORK_NODE_HEARTBEAT_TIMEOUT"
    )
    db_pool_min: int = Field(default=2, ge=1, le=100, validation_alias="ZEITWORK_DB_POOL_MIN")
    db_pool_max: int = Field(default=10, ge=1, le=200, validation_alias="ZEITWORK_DB_POOL_MAX")
    db_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        validation_alias="ZEITWORK_DB_TIMEOUT",
        description="seconds to wait for a database connection before answering 503",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias="ZEITWORK_WORKERS",
        description="HTTP worker processes sharing PORT (SO_REUSEPORT)",
    )
    token_cache_seconds: float = Field(
        default=5.0, ge=0, le=300, validation_alias="ZEITWORK_TOKEN_CACHE_SECONDS"
    )

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.environment is Environment.DEVELOPMENT
