"""The part of an OCI image configuration that decides how a container runs.

``parse_image_config`` turns the config blob's JSON into an ``ImageConfig`` and refuses
anything malformed with ``InvalidInput``; it is pure (no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zeitwork.core.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image says about its process (OCI ``config`` section) and platform.

    ``env`` keeps the OCI form (``"KEY=value"`` strings, image order); ``env_map()`` gives a
    dict. ``exposed_ports`` are normalised to ``"<port>/<proto>"`` (``"8080"`` becomes
    ``"8080/tcp"``). Empty ``working_dir`` / ``user`` mean "not set" (``/`` and root).
    """

    architecture: str
    os: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def env_map(self) -> dict[str, str]:
        """The image environment as a dict (a later duplicate key wins, as in Docker)."""
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def tcp_ports(self) -> list[int]:
        """Exposed TCP port numbers, sorted."""
        ports = set()
        for item in self.exposed_ports:
            number, _, proto = item.partition("/")
            if proto == "tcp":
                ports.add(int(number))
        return sorted(ports)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the operator stores and shows); inverse of ``from_dict``."""
        return {
            "architecture": self.architecture,
            "os": self.os,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "exposed_ports": list(self.exposed_ports),
            "stop_signal": self.stop_signal,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageConfig:
        """Rebuild from ``to_dict()`` output (e.g. a JSON column); validates like the parser."""
        return parse_image_config(
            {
                "architecture": data.get("architecture"),
                "os": data.get("os"),
                "config": {
                    "Entrypoint": data.get("entrypoint") or None,
                    "Cmd": data.get("cmd") or None,
                    "Env": data.get("env") or None,
                    "WorkingDir": data.get("working_dir") or "",
                    "User": data.get("user") or "",
                    "ExposedPorts": {p: {} for p in data.get("exposed_ports") or ()},
                    "StopSignal": data.get("stop_signal"),
                    "Labels": data.get("labels") or None,
                },
            }
        )


def _str_list(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"image config: {what} must be a list of strings")
    if any("\x00" in v for v in value):
        raise InvalidInput(f"image config: {what} contains a NUL character")
    return tuple(value)


def _opt_str(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInput(f"image config: {what} must be a string")
    return value


def _ports(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidInput("image config: ExposedPorts must be an object")
    out: set[str] = set()
    for key in value:
        number, sep, proto = str(key).partition("/")
        proto = proto if sep else "tcp"
        if proto not in ("tcp", "udp", "sctp") or not number.isdigit():
            raise InvalidInput(f"image config: bad exposed port {key!r} (expected e.g. 8080/tcp)")
        port = int(number)
        if not 1 <= port <= 65535:
            raise InvalidInput(f"image config: exposed port {key!r} is out of range")
        out.add(f"{port}/{proto}")
    return tuple(sorted(out, key=lambda p: (int(p.split("/")[0]), p)))


def parse_image_config(raw: Mapping[str, Any]) -> ImageConfig:
    """Validate an OCI image configuration (the config blob, parsed) into ``ImageConfig``."""
    if not isinstance(raw, Mapping):
        raise InvalidInput("image config must be a JSON object")
    architecture = raw.get("architecture")
    os_name = raw.get("os")
    if not isinstance(architecture, str) or not architecture:
        raise InvalidInput("image config: architecture is missing")
    if not isinstance(os_name, str) or not os_name:
        raise InvalidInput("image config: os is missing")
    section = raw.get("config")
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise InvalidInput("image config: config must be an object")
    env = _str_list(section.get("Env"), "Env")
    for item in env:
        if "=" not in item or item.startswith("="):
            raise InvalidInput(f"image config: Env entry {item[:80]!r} is not KEY=value")
    labels_raw = section.get("Labels") or {}
    if not isinstance(labels_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels_raw.items()
    ):
        raise InvalidInput("image config: Labels must map strings to strings")
    stop_signal = section.get("StopSignal")
    if stop_signal is not None and not isinstance(stop_signal, str):
        raise InvalidInput("image config: StopSignal must be a string")
    return ImageConfig(
        architecture=architecture,
        os=os_name,
        entrypoint=_str_list(section.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(section.get("Cmd"), "Cmd"),
        env=env,
        working_dir=_opt_str(section.get("WorkingDir"), "WorkingDir"),
        user=_opt_str(section.get("User"), "User"),
        exposed_ports=_ports(section.get("ExposedPorts")),
        stop_signal=stop_signal or None,
        labels=dict(labels_raw),
    )
