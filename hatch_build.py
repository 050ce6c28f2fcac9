"""Compiled hot path (mypyc), built into every release wheel by default: the proxy core
shared by the load balancer and the edge, and the edge's per-request policy modules.

``make build``, ``pip wheel .`` and ``scripts/install.sh`` compile the modules listed in
``COMPILED`` with mypyc; editable installs (``make bootstrap``, ``pip install -e``) stay pure
Python. The modules are plain typed Python and behave the same either way (the slow test
``tests/integration/compiled`` runs the proxy, edge and load balancer suites against the compiled
wheel); the load balancer is about 1.4x faster compiled (``benchmarks/lb.sh`` and
``benchmarks/edge.sh`` measure both).

    ZEITWORK_PURE_PYTHON=1       build a pure-Python wheel (no compiler, no mypy needed)
    ZEITWORK_REQUIRE_COMPILED=1  fail the build instead of falling back to pure Python

Without a C compiler, or when mypyc fails, the build says so on stderr and falls back to
pure Python (a working, slower proxy). The modules are compiled from a temporary copy of the
package (so no extension modules ever land in ``src/``) and added to the wheel next to their
sources; Python imports the extension in preference to the ``.py`` file. At start the load
balancer and the edge proxy log ``proxy.core compiled=true|false``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

COMPILED = (
    "zeitwork/proxy/server.py",
    "zeitwork/proxy/config.py",
    "zeitwork/proxy/engine.py",
    "zeitwork/proxy/client.py",
    "zeitwork/proxy/connection.py",
    "zeitwork/proxy/state.py",
    "zeitwork/proxy/output.py",
    "zeitwork/proxy/http1.py",
    "zeitwork/proxy/exchange.py",
    "zeitwork/proxy/tunnel.py",
    "zeitwork/proxy/responses.py",
    "zeitwork/proxy/websocket.py",
    "zeitwork/proxy/upstream.py",
    "zeitwork/proxy/headers.py",
    "zeitwork/proxy/backends.py",
    "zeitwork/proxy/balancing.py",
    "zeitwork/proxy/health.py",
    "zeitwork/proxy/routing.py",
    "zeitwork/proxy/types.py",
    # HTTP/2 at the client side: the connection, its streams, their rules, the HPACK encoder
    "zeitwork/proxy/http2.py",
    "zeitwork/proxy/h2_stream.py",
    "zeitwork/proxy/h2_rules.py",
    "zeitwork/proxy/h2_hpack.py",
    # the edge: its client protocols and engine (native subclasses of the core's), and its
    # per-request policy: rate limiter, security headers, CORS, redirects
    "zeitwork/edge/engine.py",
    "zeitwork/edge/tls_transport.py",
    "zeitwork/edge/policy.py",
    "zeitwork/edge/rate_limit.py",
    "zeitwork/edge/security_headers.py",
    "zeitwork/edge/cors.py",
    "zeitwork/edge/redirect.py",
)
BUILD_DEPENDENCIES = ["mypy>=1.10", "setuptools>=65"]
_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _say(message: str) -> None:
    print(f"zeitwork build: {message}", file=sys.stderr, flush=True)


def _compiler() -> str | None:
    """The C compiler distutils/setuptools would use, if it exists."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return shutil.which(words[0]) if words else None


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        # installed into the isolated build environment before the build; none when opting out
        return [] if _flag("ZEITWORK_PURE_PYTHON") else list(BUILD_DEPENDENCIES)

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if _flag("ZEITWORK_PURE_PYTHON"):
            _say("ZEITWORK_PURE_PYTHON is set: building the pure-Python proxy core")
            return
        problem = self._cannot_compile()
        if problem is not None:
            self._fall_back(problem)
            return
        root = Path(self.root)
        work = Path(tempfile.mkdtemp(prefix="zeitwork-mypyc-"))
        self._work = work
        shutil.copytree(
            root / "src" / "zeitwork",
            work / "zeitwork",
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        # the isolated build environment has no runtime dependencies (httptools): do not
        # type-check against them, only compile
        (work / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
        _say("compiling the proxy core with mypyc (ZEITWORK_PURE_PYTHON=1 skips this)")
        # the build environment as it is (pip's isolation works through PYTHONPATH), but
        # not the caller's MYPY* settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
        env["MYPYPATH"] = str(work)
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *COMPILED],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        built = [*work.glob("*.so"), *work.glob("zeitwork/*/*.so")]
        if done.returncode != 0 or not built:
            tail = "\n".join(done.stdout.strip().splitlines()[-15:])
            self._fall_back(f"mypyc failed (exit {done.returncode}):\n{tail}")
            return
        for path in built:
            build_data["force_include"][str(path)] = str(path.relative_to(work))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        _say(f"compiled proxy core: {len(built)} extension modules")

    def _cannot_compile(self) -> str | None:
        if _compiler() is None:
            return "no C compiler found (install gcc, or set CC)"
        try:
            import mypyc  # noqa: F401
        except ImportError:
            return "mypyc is not installed in the build environment"
        if (
            not sysconfig.get_paths().get("include")
            or not Path(sysconfig.get_paths()["include"], "Python.h").exists()
        ):
            return "Python headers (Python.h) are missing (Debian: apt-get install python3-dev)"
        return None

    def _fall_back(self, why: str) -> None:
        if _flag("ZEITWORK_REQUIRE_COMPILED"):
            raise RuntimeError(f"zeitwork build: cannot compile the proxy core: {why}")
        _say(f"cannot compile the proxy core: {why}")
        _say("falling back to the pure-Python proxy core (works, about 1.4x slower)")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
