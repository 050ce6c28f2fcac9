"""How a container's main process runs: the image config, its resolved user and the
instance's environment merged (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from zeitwork.core.errors import InvalidInput
from zeitwork.images.config import ImageConfig
from zeitwork.images.users import ResolvedUser

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """argv, environment, working directory and numeric identity of the process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()

    @property
    def user(self) -> str:
        """``"uid:gid"`` (what ``zeitwork.runtime.base.ProcessSpec.user`` expects)."""
        return f"{self.uid}:{self.gid}"

    def env_list(self) -> list[str]:
        """``KEY=value`` strings (the OCI runtime spec's form)."""
        return [f"{key}={value}" for key, value in self.env.items()]


def _check_env(overrides: Mapping[str, str]) -> None:
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
            raise InvalidInput(f"environment variable name {str(key)[:80]!r} is not valid")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput(f"environment variable {key!r} has a value that is not valid")


def build_process(
    config: ImageConfig, user: ResolvedUser, env_overrides: Mapping[str, str] | None = None
) -> ProcessConfig:
    """Combine the image config with the instance's settings, following OCI/Docker rules.

    - ``argv`` = ``Entrypoint`` + ``Cmd`` (either may be empty, not both).
    - ``env`` = the image's ``Env``; ``PATH`` (``DEFAULT_PATH``) and ``HOME`` (the user's home
      from /etc/passwd) are added when the image does not set them; then the instance's
      variables override any of these.
    - ``cwd`` = ``WorkingDir`` made absolute, ``/`` when unset.
    """
    argv = (*config.entrypoint, *config.cmd)
    if not argv:
        raise InvalidInput("the image has neither an entrypoint nor a cmd: nothing to run")
    env = config.env_map()
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", user.home)
    if env_overrides:
        _check_env(env_overrides)
        env.update(env_overrides)
    cwd = posixpath.normpath("/" + config.working_dir.lstrip("/"))
    return ProcessConfig(
        argv=argv,
        env=env,
        cwd=cwd,
        uid=user.uid,
        gid=user.gid,
        additional_gids=user.additional_gids,
    )
