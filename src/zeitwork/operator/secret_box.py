"""App secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with the operator's key.

The key is ``ZEITWORK_SECRETS_KEY``, or one made once in the data dir (``secrets.key``,
mode 0600; ``main`` logs where). Ciphertexts live in ``releases.secrets``; plaintexts only
travel in a node's assignments, never in the API's answers or the logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from zeitwork.core.errors import InvalidInput, ZeitworkError
from zeitwork.operator.settings import OperatorSettings

KEY_FILE = "secrets.key"


class SecretKeyError(ZeitworkError):
    title = "Bad secrets key"
    code = "secrets-key"


class SecretBox:
    def __init__(self, *, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise SecretKeyError(
                "ZEITWORK_SECRETS_KEY must be a Fernet key (urlsafe base64 of 32 bytes)"
            ) from exc

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise InvalidInput("a stored secret does not open with this operator's key") from exc


def load_secret_box(settings: OperatorSettings) -> tuple[SecretBox, Path | None]:
    """The box, and the key file's path when this call created it (blocking: call it at
    start-up, in a thread from async code)."""
    if settings.secrets_key is not None:
        return SecretBox(key=settings.secrets_key.get_secret_value().encode()), None
    path = settings.data_dir / KEY_FILE
    try:
        return SecretBox(key=path.read_bytes().strip()), None
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return SecretBox(key=key), path
