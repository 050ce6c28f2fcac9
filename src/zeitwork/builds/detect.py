"""Stack detection: what a source directory without a Dockerfile is, and how to build it.

``detect`` reads a handful of marker files (never runs anything) and returns a ``BuildPlan``:
the stack, a generated Dockerfile, the start command and the reasons for each choice, so
``zeitwork deploy --dry-run`` can show them. The order of precedence is a Dockerfile (used
as it is), then Python, Go, Node and a static site; a marker of a stack that lost is named
in the reasons.

Generated Dockerfiles start ``FROM`` a build argument (``BASE_IMAGE``, or ``BUILDER_IMAGE``
for Go) whose default is the platform's base image for the stack (``base_images``), so a
user's own base is one ``--build-arg`` away. They run the app as ``nobody`` (65534) and
listen on ``$PORT`` (8080 unless the release sets it). Package installs read the host's
index and proxy settings through the build arguments ``BuildPlan.build_args`` picks.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zeitwork.builds.base_images import default_reference
from zeitwork.core.errors import InvalidInput

PORT = 8080
DOCKERFILES = ("Dockerfile", "Containerfile")
#: Every marker ``detect`` looks for, in the order it looks (named by ``UnknownStack``).
MARKERS = (
    "Dockerfile",
    "requirements.txt",
    "pyproject.toml",
    "Pipfile",
    "go.mod",
    "package.json",
    "index.html",
)
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
CA_PATH = "/etc/ssl/certs/zeitwork-ca.pem"
"""where RUN steps find the builder's CA bundle (``BUILDER_CA_BUNDLE``), mounted read-only"""
CA_ARGS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS")
"""the build arguments naming ``CA_PATH`` for OpenSSL, requests, pip and Node"""
_STACK_ARGS: dict[str, tuple[str, ...]] = {
    "python": ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"),
    "node": ("npm_config_registry",),
    "go": ("GOPROXY", "GOSUMDB", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOINSECURE"),
    "static": (),
    "dockerfile": (),
}
_PY_FILES = ("app.py", "main.py", "wsgi.py", "asgi.py", "server.py", "application.py")
_APP_VAR = re.compile(r"^(app|application|api)\s*(?::[^=]+)?=", re.MULTILINE)
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_ASGI_FRAMEWORKS = frozenset({"fastapi", "starlette", "quart", "litestar", "sanic"})


class DetectError(InvalidInput):
    """The directory's stack was found but cannot be built as it is; the detail says why."""


class UnknownStack(DetectError):
    """No marker of a known stack was found; the detail names what was looked for."""


@dataclass(frozen=True)
class BuildPlan:
    """How to build a directory.

    ``dockerfile`` is the generated text, or None when the directory has its own (its name is
    then ``dockerfile_name``). ``base_images`` maps each build argument a generated
    Dockerfile starts ``FROM`` to the base image name it defaults to (``"python"``).
    """

    stack: str
    dockerfile: str | None
    start: str | None
    reasons: tuple[str, ...]
    base_images: Mapping[str, str] = field(default_factory=dict)
    dockerfile_name: str = "Dockerfile"
    port: int = PORT

    def build_args(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The host's package index and proxy settings this plan's build should get.

        Only names set (non-empty) in ``environ`` are returned; a Dockerfile of the user's
        gets the proxies only (buildah predefines those arguments).
        """
        names = (*_STACK_ARGS.get(self.stack, ()), *PROXY_ARGS)
        return {name: environ[name] for name in names if environ.get(name)}


def detect(directory: Path) -> BuildPlan:
    """The build plan for ``directory``; ``UnknownStack`` or ``DetectError`` when none fits."""
    if not directory.is_dir():
        raise DetectError(f"{directory} is not a directory")
    for name in DOCKERFILES:
        if (directory / name).is_file():
            return BuildPlan(
                stack="dockerfile",
                dockerfile=None,
                start=None,
                reasons=(f"{name} found; building it as it is",),
                dockerfile_name=name,
            )
    found = [m for m in MARKERS if (directory / m).is_file()]
    python: list[str] = [m for m in ("requirements.txt", "pyproject.toml", "Pipfile") if m in found]
    if python:
        plan = _python(directory, python)
    elif "go.mod" in found:
        plan = _go(directory)
    elif "package.json" in found:
        plan = _node(directory)
    elif "index.html" in found:
        plan = _static()
    else:
        raise UnknownStack(
            f"no known stack in {directory}: looked for {', '.join(MARKERS)} "
            "(add a Dockerfile to build anything else)"
        )
    used: dict[str, list[str]] = {"python": python, "go": ["go.mod"], "node": ["package.json"]}
    unused = [m for m in found if m not in used.get(plan.stack, ["index.html"])]
    if unused:
        extra = f"{', '.join(unused)} also found; not used (the {plan.stack} stack comes first)"
        plan = BuildPlan(
            stack=plan.stack,
            dockerfile=plan.dockerfile,
            start=plan.start,
            reasons=(*plan.reasons, extra),
            base_images=plan.base_images,
        )
    return plan


# ------------------------------------------------------------------------------ Python


def _python(directory: Path, markers: list[str]) -> BuildPlan:
    reasons = [f"{' and '.join(markers)} found: Python"]
    deps = _python_dependencies(directory, markers)
    if "requirements.txt" in markers:
        install = ["COPY requirements.txt ./", "RUN pip install -r requirements.txt", "COPY . ."]
        reasons.append("dependencies from requirements.txt (pip install -r)")
    elif "pyproject.toml" in markers:
        install = ["COPY . .", "RUN pip install ."]
        reasons.append("dependencies from pyproject.toml (pip install .)")
    else:
        lock = (directory / "Pipfile.lock").is_file()
        flags = "--deploy" if lock else "--skip-lock"
        install = [
            "COPY Pipfile* ./",
            f"RUN pip install pipenv && pipenv install --system {flags}",
            "COPY . .",
        ]
        reasons.append(
            "dependencies from Pipfile.lock (pipenv install --deploy)"
            if lock
            else "dependencies from Pipfile, no Pipfile.lock (pipenv install --skip-lock)"
        )
    start, why = _python_start(directory, deps)
    reasons.append(why)
    lines = [
        *_header("python", "BASE_IMAGE"),
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore VIRTUAL_ENV=/opt/venv \\",
        f"    PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PORT={PORT}",
        "RUN python3 -m venv /opt/venv",
        "WORKDIR /app",
        *install,
        *_footer(start),
    ]
    return BuildPlan(
        stack="python",
        dockerfile=_text(lines),
        start=start,
        reasons=tuple(reasons),
        base_images={"BASE_IMAGE": "python"},
    )


def _python_start(directory: Path, deps: set[str]) -> tuple[str, str]:
    procfile = _procfile_web(directory)
    if procfile is not None:
        return procfile, "start from Procfile web: line"
    asgi = bool(deps & _ASGI_FRAMEWORKS)
    target = _python_app_target(directory, asgi=asgi)
    if "uvicorn" in deps and (asgi or "gunicorn" not in deps):
        if target is None:
            raise DetectError(_no_target("uvicorn"))
        return (
            f"uvicorn {target} --host 0.0.0.0 --port $PORT",
            f"uvicorn is a dependency; serving {target}",
        )
    if "gunicorn" in deps:
        if target is None:
            raise DetectError(_no_target("gunicorn"))
        return (
            f"gunicorn --bind 0.0.0.0:$PORT {target}",
            f"gunicorn is a dependency; serving {target}",
        )
    raise DetectError(
        "a Python app, but no start command: add a Procfile with a 'web:' line, "
        "or depend on gunicorn or uvicorn"
    )


def _no_target(server: str) -> str:
    return (
        f"{server} is a dependency but no app object was found (looked for app, application "
        f"or api in {', '.join(_PY_FILES)}, and a Django project's wsgi.py): add a Procfile "
        "with a 'web:' line"
    )


def _python_app_target(directory: Path, *, asgi: bool) -> str | None:
    if (directory / "manage.py").is_file():
        kind = "asgi" if asgi else "wsgi"
        for candidate in sorted(directory.glob(f"*/{kind}.py")):
            return f"{candidate.parent.name}.{kind}:application"
    for name in _PY_FILES:
        path = directory / name
        if path.is_file():
            match = _APP_VAR.search(path.read_text(encoding="utf-8", errors="replace"))
            if match:
                return f"{path.stem}:{match.group(1)}"
    return None


def _python_dependencies(directory: Path, markers: list[str]) -> set[str]:
    names: list[str] = []
    if "requirements.txt" in markers:
        text = (directory / "requirements.txt").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.strip().startswith(("#", "-")):
                continue
            match = _REQ_NAME.match(line)
            if match:
                names.append(match.group(1))
    if "pyproject.toml" in markers:
        data = _toml(directory / "pyproject.toml")
        project = data.get("project")
        if isinstance(project, dict):
            deps = project.get("dependencies")
            for spec in deps if isinstance(deps, list) else []:
                match = _REQ_NAME.match(str(spec))
                if match:
                    names.append(match.group(1))
        tool = data.get("tool")
        poetry = tool.get("poetry") if isinstance(tool, dict) else None
        if isinstance(poetry, dict) and isinstance(poetry.get("dependencies"), dict):
            names.extend(poetry["dependencies"])
    if "Pipfile" in markers:
        packages = _toml(directory / "Pipfile").get("packages")
        if isinstance(packages, dict):
            names.extend(packages)
    return {_normalise_name(n) for n in names}


def _normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DetectError(f"{path.name} is not valid TOML: {exc}") from exc


def _procfile_web(directory: Path) -> str | None:
    path = directory / "Procfile"
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == "web" and command.strip():
            return command.strip()
    return None


# ---------------------------------------------------------------------------------- Go


def _go(directory: Path) -> BuildPlan:
    reasons = ["go.mod found: Go (a static binary in an image from scratch)"]
    package = _go_main_package(directory)
    reasons.append(f"main package {package}")
    mod_files = ["go.mod", *(["go.sum"] if (directory / "go.sum").is_file() else [])]
    lines = [
        *_header("go", "BUILDER_IMAGE", stage="build"),
        "ENV CGO_ENABLED=0 GOFLAGS=-trimpath GOPATH=/tmp/go GOCACHE=/tmp/go-cache",
        "WORKDIR /src",
        f"COPY {' '.join(mod_files)} ./",
        "RUN go mod download",
        "COPY . .",
        f'RUN go build -ldflags="-s -w" -o /out/app {package}',
        "",
        "FROM scratch",
        "COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/",
        "COPY --from=build /out/app /app",
        f"ENV PORT={PORT}",
        "USER 65534:65534",
        f"EXPOSE {PORT}",
        'ENTRYPOINT ["/app"]',
    ]
    return BuildPlan(
        stack="go",
        dockerfile=_text(lines),
        start="/app",
        reasons=tuple(reasons),
        base_images={"BUILDER_IMAGE": "go"},
    )


def _go_main_package(directory: Path) -> str:
    if _has_go_main(directory.glob("*.go")):
        return "."
    commands = sorted(p for p in directory.glob("cmd/*") if _has_go_main(p.glob("*.go")))
    if len(commands) == 1:
        return f"./cmd/{commands[0].name}"
    if len(commands) > 1:
        names = ", ".join(p.name for p in commands)
        raise DetectError(
            f"go.mod found but several commands under cmd/ ({names}): add a Dockerfile "
            "that builds the one to serve"
        )
    raise DetectError("go.mod found but no 'package main' at the top or in one cmd/<name>/")


def _has_go_main(files: Iterable[Path]) -> bool:
    pattern = re.compile(r"^package\s+main\b", re.MULTILINE)
    return any(
        not f.name.endswith("_test.go")
        and pattern.search(f.read_text(encoding="utf-8", errors="replace"))
        for f in files
    )


# -------------------------------------------------------------------------------- Node


def _node(directory: Path) -> BuildPlan:
    try:
        package = json.loads((directory / "package.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectError(f"package.json is not valid JSON: {exc}") from exc
    if not isinstance(package, dict):
        raise DetectError("package.json is not a JSON object")
    raw_scripts = package.get("scripts")
    scripts: dict[str, Any] = raw_scripts if isinstance(raw_scripts, dict) else {}
    reasons = ["package.json found: Node.js"]
    locks = [n for n in ("package-lock.json", "npm-shrinkwrap.json") if (directory / n).is_file()]
    if locks:
        install = "npm ci"
        reasons.append(f"{locks[0]} found: npm ci")
    else:
        install = "npm install"
        reasons.append("no package-lock.json: npm install")
    for other in ("yarn.lock", "pnpm-lock.yaml"):
        if (directory / other).is_file():
            reasons.append(f"{other} found but not used (npm is the base image's client)")
    build: list[str] = []
    if isinstance(scripts.get("build"), str):
        build = ["RUN npm run build", "RUN npm prune --omit=dev"]
        reasons.append("a build script: npm run build, then dev dependencies pruned")
        steps = [f"COPY {' '.join(['package.json', *locks])} ./", f"RUN {install}", "COPY . ."]
    else:
        steps = [
            f"COPY {' '.join(['package.json', *locks])} ./",
            f"RUN {install} --omit=dev",
            "COPY . .",
        ]
    if isinstance(scripts.get("start"), str):
        start = "npm start"
        reasons.append("start from the start script (npm start)")
    elif isinstance(package.get("main"), str) and package["main"]:
        start = f"node {package['main']}"
        reasons.append(f"no start script: node {package['main']} (package.json main)")
    elif (directory / "server.js").is_file():
        start = "node server.js"
        reasons.append("no start script: node server.js")
    else:
        raise DetectError(
            "package.json has no start script, no main and there is no server.js: "
            "add a start script"
        )
    lines = [
        *_header("node", "BASE_IMAGE"),
        f"ENV NODE_ENV=production PORT={PORT} npm_config_cache=/tmp/.npm \\",
        "    npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false",
        "WORKDIR /app",
        *steps,
        *build,
        *_footer(start),
    ]
    return BuildPlan(
        stack="node",
        dockerfile=_text(lines),
        start=start,
        reasons=tuple(reasons),
        base_images={"BASE_IMAGE": "node"},
    )


# ------------------------------------------------------------------------------ static


def _static() -> BuildPlan:
    start = 'busybox httpd -f -v -p "${PORT:-8080}" -h /srv/www'
    lines = [
        *_header("static", "BASE_IMAGE"),
        "COPY . /srv/www",
        f"ENV PORT={PORT}",
        "USER 65534:65534",
        f"EXPOSE {PORT}",
        f'CMD ["/bin/busybox", "sh", "-c", {json.dumps("exec /bin/" + start)}]',
    ]
    return BuildPlan(
        stack="static",
        dockerfile=_text(lines),
        start=start,
        reasons=("index.html found: a static site served by busybox httpd",),
        base_images={"BASE_IMAGE": "static"},
    )


# ------------------------------------------------------------------------------ shared


def _header(base: str, arg: str, *, stage: str | None = None) -> list[str]:
    as_stage = f" AS {stage}" if stage else ""
    args = [*_STACK_ARGS[base], *PROXY_ARGS, *CA_ARGS]
    return [
        f"# Generated by zeitwork for the {base} stack; put a Dockerfile beside your code to",
        "# build it your way instead.",
        f"ARG {arg}={default_reference(base)}",
        f"FROM ${{{arg}}}{as_stage}",
        *(f"ARG {name}" for name in args),
    ]


_BARE_ARG = re.compile(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)\n", re.MULTILINE)
_ANY_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE | re.IGNORECASE)


def declared_only(dockerfile: str, given: Mapping[str, str]) -> str:
    """A generated ``dockerfile`` without the ``ARG NAME`` lines (no default) of arguments
    not in ``given``: each is a step of its own, and buildah warns about every one unset."""
    return _BARE_ARG.sub(lambda m: m.group(0) if m.group(1) in given else "", dockerfile)


def declared_args(dockerfile: str) -> set[str]:
    """The names a Dockerfile declares with ``ARG`` (in any stage)."""
    return set(_ANY_ARG.findall(dockerfile))


def _footer(start: str) -> list[str]:
    return [
        "USER 65534:65534",
        f"EXPOSE {PORT}",
        f'CMD ["/bin/sh", "-c", {json.dumps("exec " + start)}]',
    ]


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ dry run


def render_plan(
    plan: BuildPlan,
    *,
    environ: Mapping[str, str],
    base_images: Mapping[str, str] | None = None,
) -> str:
    """The ``--dry-run`` text: what was detected, why, and the Dockerfile that would run.

    ``base_images`` maps a base image name to the reference a user configured instead of
    the default. Build argument values are not shown (an index URL can hold a token).
    """
    out = [f"Stack: {plan.stack}"]
    out.extend(f"  - {reason}" for reason in plan.reasons)
    if plan.start is not None:
        out.append(f"Start command: {plan.start}")
    overrides = base_images or {}
    for arg, name in plan.base_images.items():
        reference = overrides.get(name, default_reference(name))
        out.append(f"Base image ({arg}): {reference}")
    args = plan.build_args(environ)
    if args:
        out.append(f"Build arguments from this environment: {', '.join(sorted(args))}")
    if plan.dockerfile is None:
        out.append(f"Dockerfile: {plan.dockerfile_name} (the directory's own)")
    else:
        out.append("Dockerfile (generated):")
        text = declared_only(plan.dockerfile, args)
        out.extend(f"  {line}" if line else "" for line in text.splitlines())
    return "\n".join(out) + "\n"
