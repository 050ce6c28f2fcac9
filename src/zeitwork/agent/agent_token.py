"""The agent's own API credential for the operator: a random token made once, kept in the
agent's data dir (``agent_token``, mode 0600), sent with every registration; the agent API
accepts it as a Bearer token (besides the node credential). The operator uses it when it
calls this agent (log fan-in); it is never a user's token.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from zeitwork.core.errors import InvalidInput
from zeitwork.core.files import atomic_write

TOKEN_BYTES = 32
_FORM = re.compile(r"^[A-Za-z0-9_-]{32,200}$")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)  # 43 characters of [A-Za-z0-9_-]


def load_or_create(path: Path) -> str:
    """The token in ``path``; made (and written with mode 0600) when the file is missing."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = new_token()
        atomic_write(path, token.encode() + b"\n", mode=0o600)
        return token
    if not _FORM.match(token):
        raise InvalidInput(f"{path} does not hold an agent token; remove it to make a new one")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return token
