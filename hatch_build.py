"""Optional compiled hot path for the proxy core (mypyc), used by wheel builds on request.

Off by default (editable installs, CI and plain builds stay pure Python). Enable with

    HATCH_BUILD_HOOK_ENABLE_CUSTOM=true python -m build --wheel

The listed modules are compiled from a temporary copy of the package (so no extension
modules ever land in ``src/``) and added to the wheel next to their sources; Python imports
the extension in preference to the ``.py`` file. The modules are plain typed Python and
behave the same either way; ``benchmarks/lb.sh`` measures both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

COMPILED = (
    "zeitwork/proxy/server.py",
    "zeitwork/proxy/upstream.py",
    "zeitwork/proxy/headers.py",
    "zeitwork/proxy/backends.py",
    "zeitwork/proxy/balancing.py",
    "zeitwork/proxy/health.py",
)


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        work = Path(tempfile.mkdtemp(prefix="zeitwork-mypyc-"))
        shutil.copytree(
            root / "src" / "zeitwork",
            work / "zeitwork",
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        # the isolated build environment has no runtime dependencies (httptools): do not
        # type-check against them, only compile
        (work / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
        subprocess.run(
            [sys.executable, "-m", "mypyc", *COMPILED],
            cwd=work,
            check=True,
            env={"MYPYPATH": str(work), "PATH": "/usr/bin:/bin"},
        )
        for built in [*work.glob("*.so"), *(work / "zeitwork" / "proxy").glob("*.so")]:
            build_data["force_include"][str(built)] = str(built.relative_to(work))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self._work = work

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
