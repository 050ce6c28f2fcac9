"""argv/env/cwd/user for an instance from its image config (OCI rules)."""

from __future__ import annotations

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images import DEFAULT_PATH, ImageConfig, ResolvedUser, build_process

APP = ResolvedUser(1000, 1000, (50,), "app", "/home/app")


def config(**kwargs: object) -> ImageConfig:
    return ImageConfig(architecture="amd64", os="linux", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "argv"),
    [
        (("/bin/app",), ("--port", "80"), ("/bin/app", "--port", "80")),
        (("/bin/app",), (), ("/bin/app",)),
        ((), ("/bin/sh", "-c", "echo hi"), ("/bin/sh", "-c", "echo hi")),
    ],
)
def test_argv_is_entrypoint_then_cmd(entrypoint, cmd, argv):
    process = build_process(config(entrypoint=entrypoint, cmd=cmd), APP)
    assert process.argv == argv


def test_nothing_to_run():
    with pytest.raises(InvalidInput, match="nothing to run"):
        build_process(config(), APP)


def test_env_merge_instance_overrides_image():
    image = config(cmd=("x",), env=("A=1", "B=image", "PATH=/opt/bin", "EMPTY="))
    process = build_process(image, APP, {"B": "instance", "C": "3", "EMPTY": "set"})
    assert process.env == {
        "A": "1",
        "B": "instance",
        "PATH": "/opt/bin",
        "EMPTY": "set",
        "HOME": "/home/app",
        "C": "3",
    }
    assert process.env_list()[0] == "A=1"


def test_env_defaults_and_overridable_defaults():
    process = build_process(config(cmd=("x",)), APP)
    assert process.env == {"PATH": DEFAULT_PATH, "HOME": "/home/app"}
    process = build_process(config(cmd=("x",)), APP, {"HOME": "/data", "PATH": "/bin"})
    assert process.env == {"PATH": "/bin", "HOME": "/data"}


def test_image_env_duplicate_last_wins():
    process = build_process(config(cmd=("x",), env=("A=1", "A=2")), APP)
    assert process.env["A"] == "2"


@pytest.mark.parametrize("bad", [{"": "x"}, {"A=B": "x"}, {"A": "nul\x00"}, {"A\x00": "x"}])
def test_invalid_env_override(bad):
    with pytest.raises(InvalidInput):
        build_process(config(cmd=("x",)), APP, bad)


@pytest.mark.parametrize(
    ("working_dir", "cwd"),
    [("", "/"), ("/www", "/www"), ("www", "/www"), ("/a/../b/", "/b"), ("//x", "/x")],
)
def test_cwd(working_dir, cwd):
    assert build_process(config(cmd=("x",), working_dir=working_dir), APP).cwd == cwd


def test_user_fields():
    process = build_process(config(cmd=("x",)), APP)
    assert (process.uid, process.gid, process.additional_gids) == (1000, 1000, (50,))
    assert process.user == "1000:1000"
