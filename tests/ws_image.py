"""A runnable OCI image whose app speaks WebSocket, built in pure Python like ``tests.images``.

The app is Debian's ``websocketd`` (package ``websocketd``: a Go binary linked against glibc,
shipped here with the libraries ``ldd`` names) on port 8080, with static busybox for its
script. Each WebSocket connection (any path) runs ``/app/echo.sh``, which answers every
message with ``"<APP_VERSION> <HOSTNAME> <message>"``: the release (an environment variable
the deploy sets) and the instance (the runtime sets ``HOSTNAME`` to ``zw-`` and the first 12
hex digits of the instance id) that served it. Plain HTTP gets ``/www`` as files: ``GET /``
answers ``index.html``, ``GET /health`` answers ``ok``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.images import APP_PORT, BuiltImage, Entry, app_entries, build_image

ECHO_SH = b"""#!/bin/sh
# one WebSocket connection: every message (a line) is answered with who served it
while IFS= read -r line; do
  echo "$APP_VERSION $HOSTNAME $line"
done
"""
WS_ENTRYPOINT = (
    "/bin/websocketd",
    f"--port={APP_PORT}",
    "--staticdir=/www",
    "--passenv=PATH,APP_VERSION,HOSTNAME",
    "--loglevel=error",
    "/app/echo.sh",
)
_LDD_LINE = re.compile(r"(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)")


def websocketd_path() -> Path:
    """The ``websocketd`` binary (Debian ``websocketd``)."""
    found = shutil.which("websocketd")
    if found is None:
        raise FileNotFoundError("websocketd is not installed (apt-get install websocketd)")
    return Path(found)


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries ``binary`` loads (its ELF interpreter included), as ``ldd`` lists them."""
    listed = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True)
    return [Path(match.group(1)) for match in _LDD_LINE.finditer(listed.stdout)]


def instance_hostname(instance_id: str) -> str:
    """The ``HOSTNAME`` an instance's app sees (the runc driver's container name)."""
    return "zw-" + uuid.UUID(instance_id).hex[:12]


def ws_app_entries() -> list[Entry]:
    """The busybox app's files (``/www`` and all), websocketd with its libraries, the script."""
    binary = websocketd_path()
    libraries = shared_libraries(binary)
    directories = sorted(
        {str(parent) for lib in libraries for parent in lib.parents if str(parent) != "/"}
    )
    return [
        *app_entries(),
        Entry("bin/websocketd", binary.read_bytes(), mode=0o755),
        *(Entry(d.lstrip("/"), mode=0o755) for d in directories),
        # the real file under the name the loader asks for (Debian's are symlinks)
        *(Entry(str(lib).lstrip("/"), lib.resolve().read_bytes(), mode=0o755) for lib in libraries),
        Entry("app", mode=0o755),
        Entry("app/echo.sh", ECHO_SH, mode=0o755),
    ]


def build_ws_image(dest: Path, **options: Any) -> BuiltImage:
    """Write the WebSocket app's OCI archive to ``dest`` (options as ``image_layout``)."""
    library_dirs = sorted({str(lib.parent) for lib in shared_libraries(websocketd_path())})
    settings: dict[str, Any] = {
        "layers": [ws_app_entries()],
        "entrypoint": WS_ENTRYPOINT,
        "env": ("PATH=/bin", "LD_LIBRARY_PATH=" + ":".join(library_dirs), "APP_VERSION=unset"),
        **options,
    }
    return build_image(dest, **settings)
