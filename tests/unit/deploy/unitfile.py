"""Reading systemd unit files, and ``systemd-analyze verify`` as a pass/fail check.

The parser follows systemd's rules as far as the tests need them: ``#`` and ``;`` start
comments, a key may repeat (its values accumulate), and an empty assignment resets the list.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
UNIT_DIR = REPO / "deployments" / "systemd"
CONFIG_DIR = REPO / "deployments" / "config"

# service name -> the `zeitwork` subcommand its unit runs
SERVICES = {
    "operator": "operator",
    "node-agent": "node-agent",
    "load-balancer": "load-balancer",
    "edge-proxy": "edge-proxy",
    "builder": "builder",
}


@dataclass
class UnitFile:
    path: Path
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else None

    def words(self, section: str, key: str) -> set[str]:
        """All space-separated words of a list setting such as ReadWritePaths=."""
        return {word for value in self.values(section, key) for word in value.split()}

    def has(self, section: str, key: str) -> bool:
        return key in self.sections.get(section, {})


def parse_unit(path: Path) -> UnitFile:
    unit = UnitFile(path=path)
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.sections.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"{path}: not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            section[key] = []  # an empty assignment resets a list setting
        else:
            section.setdefault(key, []).append(value)
    return unit


def systemd_analyze() -> str | None:
    return shutil.which("systemd-analyze")


def verify(*units: Path) -> tuple[bool, str]:
    """Run ``systemd-analyze verify`` on unit files.

    It exits 0 even for unknown keys and unparsable values (it only prints a warning), so a
    unit passes only with exit status 0 AND no output at all.
    """
    tool = systemd_analyze()
    assert tool is not None, "systemd-analyze is missing (Debian package systemd)"
    proc = subprocess.run(
        [tool, "verify", "--man=no", *[str(u) for u in units]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0 and output == "", output


def with_exec_start(text: str, executable: Path) -> str:
    """The unit text with /opt/zeitwork/bin/zeitwork replaced by an existing executable."""
    return text.replace("/opt/zeitwork/bin/zeitwork", str(executable))


def make_stub_executable(directory: Path) -> Path:
    stub = directory / "zeitwork"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    return stub
