"""Turn a unit's seccomp-based settings into a policy for sandbox.py.

System call groups come from this machine's systemd (`systemd-analyze syscall-filter`), the
same definitions systemd would use; numbers from the kernel headers (linux-libc-dev).
"""

from __future__ import annotations

import errno as errno_module
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.unit.deploy.unitfile import UnitFile

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def syscall_numbers() -> dict[str, int]:
    numbers = {}
    for match in re.finditer(r"^#define __NR_(\w+)\s+(\d+)$", UNISTD.read_text(), re.MULTILINE):
        numbers[match.group(1)] = int(match.group(2))
    return numbers


def syscall_groups() -> dict[str, list[str]]:
    output = subprocess.run(
        ["systemd-analyze", "syscall-filter"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            current = None  # a blank line or a top-level comment ends a group
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(words: set[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    pending = list(words)
    seen: set[str] = set()
    while pending:
        word = pending.pop()
        if word in seen:
            continue
        seen.add(word)
        if word.startswith("@"):
            pending.extend(groups[word])
        else:
            names.add(word)
    return names


def policy_for(unit: UnitFile) -> dict[str, Any]:
    numbers = syscall_numbers()
    words = unit.words("Service", "SystemCallFilter")
    assert not any(w.startswith("~") for w in words), "deny lists are not emulated"
    allow = None
    if words:
        names = expand(words, syscall_groups())
        allow = sorted({numbers[n] for n in names if n in numbers})
    families = None
    if unit.has("Service", "RestrictAddressFamilies"):
        families = sorted(
            int(getattr(socket, name)) for name in unit.words("Service", "RestrictAddressFamilies")
        )
    error_name = unit.get("Service", "SystemCallErrorNumber")
    return {
        "no_new_privs": unit.get("Service", "NoNewPrivileges") == "yes",
        "mdwe": unit.get("Service", "MemoryDenyWriteExecute") == "yes",
        "arch_native": unit.get("Service", "SystemCallArchitectures") == "native",
        "allow": allow,
        "errno": int(getattr(errno_module, error_name)) if error_name else None,
        "families": families,
        "restrict_namespaces": unit.get("Service", "RestrictNamespaces") == "yes",
        "nr": {name: numbers[name] for name in ("socket", "clone", "clone3", "unshare", "setns")},
    }
