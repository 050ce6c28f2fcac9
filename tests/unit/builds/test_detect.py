"""Stack detection on sample directories: the stack, the start command, the reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zeitwork.builds.detect import (
    CA_PATH,
    MARKERS,
    DetectError,
    UnknownStack,
    declared_args,
    declared_only,
    detect,
    render_plan,
)

SAMPLES = Path(__file__).resolve().parents[2] / "builds_samples"


def _dir(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_dockerfile_is_used_as_it_is() -> None:
    plan = detect(SAMPLES / "dockerfile_app")
    assert plan.stack == "dockerfile"
    assert plan.dockerfile is None
    assert plan.dockerfile_name == "Dockerfile"
    assert plan.reasons == ("Dockerfile found; building it as it is",)


def test_containerfile_counts_as_a_dockerfile(tmp_path: Path) -> None:
    plan = detect(_dir(tmp_path, {"Containerfile": "FROM x\n", "requirements.txt": ""}))
    assert (plan.stack, plan.dockerfile_name) == ("dockerfile", "Containerfile")


def test_python_sample_starts_from_its_procfile() -> None:
    plan = detect(SAMPLES / "python_app")
    assert plan.stack == "python"
    assert plan.start == "python3 app.py"
    assert plan.reasons == (
        "requirements.txt found: Python",
        "dependencies from requirements.txt (pip install -r)",
        "start from Procfile web: line",
    )
    assert plan.base_images == {"BASE_IMAGE": "python"}
    assert plan.dockerfile is not None
    lines = plan.dockerfile.splitlines()
    assert "ARG BASE_IMAGE=localhost/zeitwork/python:bookworm" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    assert "ARG PIP_INDEX_URL" in lines
    assert lines.index("COPY requirements.txt ./") < lines.index("COPY . .")
    assert lines[-1] == '["/bin/sh", "-c", "exec python3 app.py"]'.join(("CMD ", ""))
    assert "USER 65534:65534" in lines


def test_python_gunicorn_flask_app(tmp_path: Path) -> None:
    plan = detect(
        _dir(
            tmp_path,
            {
                "requirements.txt": (
                    "Flask==3.0\n# comment\n-r base.txt\ngunicorn>=21 ; python_version>'3'\n"
                ),
                "app.py": "from flask import Flask\n\napp = Flask(__name__)\n",
            },
        )
    )
    assert plan.start == "gunicorn --bind 0.0.0.0:$PORT app:app"
    assert "gunicorn is a dependency; serving app:app" in plan.reasons


def test_python_uvicorn_fastapi_from_pyproject(tmp_path: Path) -> None:
    pyproject = (
        '[project]\nname = "x"\ndependencies = ["FastAPI", "uvicorn[standard]>=0.30", "Gunicorn"]\n'
    )
    plan = detect(
        _dir(tmp_path, {"pyproject.toml": pyproject, "main.py": "app: FastAPI = FastAPI()\n"})
    )
    assert plan.start == "uvicorn main:app --host 0.0.0.0 --port $PORT"
    assert "dependencies from pyproject.toml (pip install .)" in plan.reasons
    assert plan.dockerfile is not None
    assert "RUN pip install ." in plan.dockerfile


def test_python_django_with_pipfile_lock(tmp_path: Path) -> None:
    plan = detect(
        _dir(
            tmp_path,
            {
                "Pipfile": '[packages]\ndjango = "*"\ngunicorn = "*"\n',
                "Pipfile.lock": "{}",
                "manage.py": "",
                "mysite/wsgi.py": "application = get_wsgi_application()\n",
            },
        )
    )
    assert plan.start == "gunicorn --bind 0.0.0.0:$PORT mysite.wsgi:application"
    assert plan.dockerfile is not None
    assert "pipenv install --system --deploy" in plan.dockerfile


def test_python_without_a_start_command_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(DetectError, match="add a Procfile with a 'web:' line"):
        detect(_dir(tmp_path, {"requirements.txt": "requests\n", "app.py": "print(1)\n"}))
    with pytest.raises(DetectError, match="gunicorn is a dependency but no app object"):
        detect(_dir(tmp_path, {"requirements.txt": "gunicorn\n"}))


def test_python_bad_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DetectError, match=r"pyproject\.toml is not valid TOML"):
        detect(_dir(tmp_path, {"pyproject.toml": "[project\n"}))


def test_node_with_lockfile_and_start_script(tmp_path: Path) -> None:
    package = {"name": "x", "scripts": {"start": "node index.js"}}
    plan = detect(_dir(tmp_path, {"package.json": json.dumps(package), "package-lock.json": "{}"}))
    assert plan.stack == "node"
    assert plan.start == "npm start"
    assert plan.reasons == (
        "package.json found: Node.js",
        "package-lock.json found: npm ci",
        "start from the start script (npm start)",
    )
    assert plan.dockerfile is not None
    assert "COPY package.json package-lock.json ./" in plan.dockerfile
    assert "RUN npm ci --omit=dev" in plan.dockerfile


def test_node_without_lockfile_with_build_and_main(tmp_path: Path) -> None:
    package = {"main": "dist/server.js", "scripts": {"build": "tsc"}}
    plan = detect(_dir(tmp_path, {"package.json": json.dumps(package), "yarn.lock": ""}))
    assert plan.start == "node dist/server.js"
    assert "no package-lock.json: npm install" in plan.reasons
    assert "yarn.lock found but not used (npm is the base image's client)" in plan.reasons
    assert plan.dockerfile is not None
    assert "RUN npm install\n" in plan.dockerfile
    assert "RUN npm run build\nRUN npm prune --omit=dev\n" in plan.dockerfile


def test_node_errors(tmp_path: Path) -> None:
    with pytest.raises(DetectError, match=r"package\.json is not valid JSON"):
        detect(_dir(tmp_path / "a", {"package.json": "{"}))
    with pytest.raises(DetectError, match="no start script, no main"):
        detect(_dir(tmp_path / "b", {"package.json": "{}"}))


def test_go_root_and_cmd_packages(tmp_path: Path) -> None:
    root = detect(_dir(tmp_path / "a", {"go.mod": "module x\n", "main.go": "package main\n"}))
    assert root.stack == "go"
    assert root.start == "/app"
    assert root.base_images == {"BUILDER_IMAGE": "go"}
    assert root.dockerfile is not None
    assert "FROM ${BUILDER_IMAGE} AS build" in root.dockerfile
    assert "FROM scratch" in root.dockerfile
    assert "COPY go.mod ./" in root.dockerfile
    one = detect(
        _dir(
            tmp_path / "b",
            {
                "go.mod": "",
                "go.sum": "",
                "lib.go": "package lib\n",
                "cmd/api/main.go": "package main\n",
            },
        )
    )
    assert "main package ./cmd/api" in one.reasons
    assert one.dockerfile is not None
    assert "COPY go.mod go.sum ./" in one.dockerfile
    with pytest.raises(DetectError, match=r"several commands under cmd/ \(a, b\)"):
        detect(
            _dir(
                tmp_path / "c",
                {"go.mod": "", "cmd/a/main.go": "package main", "cmd/b/main.go": "package main"},
            )
        )
    with pytest.raises(DetectError, match="no 'package main'"):
        detect(_dir(tmp_path / "d", {"go.mod": "", "x_test.go": "package main"}))


def test_static_site_sample() -> None:
    plan = detect(SAMPLES / "static_site")
    assert plan.stack == "static"
    assert plan.reasons == ("index.html found: a static site served by busybox httpd",)
    assert plan.dockerfile is not None
    assert "COPY . /srv/www" in plan.dockerfile


def test_precedence_is_named_in_the_reasons(tmp_path: Path) -> None:
    plan = detect(
        _dir(
            tmp_path,
            {
                "requirements.txt": "",
                "Procfile": "web: python3 -m app\n",
                "package.json": "{}",
                "index.html": "",
            },
        )
    )
    assert plan.stack == "python"
    assert plan.reasons[-1] == (
        "package.json, index.html also found; not used (the python stack comes first)"
    )


def test_unknown_stack_names_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("hi")
    with pytest.raises(UnknownStack) as caught:
        detect(tmp_path)
    for marker in MARKERS:
        assert marker in caught.value.detail
    assert "index.html" in str(caught.value)


def test_build_args_pass_only_what_is_set_and_the_stacks_own() -> None:
    environ = {
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "npm_config_registry": "https://npm.example/",
        "GOPROXY": "https://goproxy.example",
        "HTTPS_PROXY": "http://proxy.example:3128",
        "HOME": "/root",
    }
    python = detect(SAMPLES / "python_app")
    assert python.build_args(environ) == {
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "HTTPS_PROXY": "http://proxy.example:3128",
    }
    own = detect(SAMPLES / "dockerfile_app")
    assert own.build_args(environ) == {"HTTPS_PROXY": "http://proxy.example:3128"}


def test_render_plan_shows_detection_plan_and_no_values() -> None:
    plan = detect(SAMPLES / "python_app")
    text = render_plan(
        plan,
        environ={"PIP_INDEX_URL": "https://user:token@mirror.example/simple"},
        base_images={"python": "registry.example/py:3.11"},
    )
    assert text.startswith("Stack: python\n  - requirements.txt found: Python\n")
    assert "Start command: python3 app.py\n" in text
    assert "Base image (BASE_IMAGE): registry.example/py:3.11\n" in text
    assert "Build arguments from this environment: PIP_INDEX_URL\n" in text
    assert "token" not in text
    assert "Dockerfile (generated):\n  # Generated by zeitwork" in text
    own = render_plan(detect(SAMPLES / "dockerfile_app"), environ={})
    assert own.endswith("Dockerfile: Dockerfile (the directory's own)\n")


def test_a_generated_dockerfile_declares_only_the_arguments_given() -> None:
    plan = detect(SAMPLES / "python_app")
    assert plan.dockerfile is not None
    every = plan.dockerfile.splitlines()
    assert "ARG PIP_CERT" in every and "ARG HTTPS_PROXY" in every  # declared in the plan
    given = {"PIP_INDEX_URL": "http://mirror/simple", "PIP_CERT": CA_PATH}
    lines = declared_only(plan.dockerfile, given).splitlines()
    bare = [line for line in lines if line.startswith("ARG ") and "=" not in line]
    assert bare == ["ARG PIP_INDEX_URL", "ARG PIP_CERT"]
    assert "ARG BASE_IMAGE=localhost/zeitwork/python:bookworm" in lines  # a default stays
    assert [line for line in lines if not line.startswith("ARG ")] == [
        line for line in every if not line.startswith("ARG ")
    ]
    assert declared_only(plan.dockerfile, {}).count("\nARG ") == 1  # BASE_IMAGE alone


def test_declared_args_reads_every_stage() -> None:
    text = "ARG A=1\nFROM x\narg pip_cert\n  ARG NODE_EXTRA_CA_CERTS\nFROM y\nARG B\nRUN ARG C\n"
    assert declared_args(text) == {"A", "pip_cert", "NODE_EXTRA_CA_CERTS", "B"}
