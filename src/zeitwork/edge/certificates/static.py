"""The static certificate: ``SSL_CERT_PATH`` and ``SSL_KEY_PATH``, re-read when they change."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Stamp:
    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class StaticFiles:
    """Watches a certificate/key pair by mtime, size and inode (renames count)."""

    def __init__(self, *, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._seen: Stamp | None = None

    def poll(self) -> tuple[Stamp, str, str] | None:
        """``(stamp, chain, key)`` when the files differ from the last accepted pair."""
        try:
            stamp = Stamp(_stamp(self.cert_path), _stamp(self.key_path))
        except OSError:
            return None
        if stamp == self._seen:
            return None
        return stamp, self.cert_path.read_text(), self.key_path.read_text()

    def accept(self, stamp: Stamp) -> None:
        """Mark a pair as served (a half-written pair that failed to load is retried)."""
        self._seen = stamp
