"""The build queue's pure rules: the cache key, what a build request accepts (refs, URLs,
paths), the commit a ref names in ``git ls-remote`` output, and the builder's reading of
its tools' output (the failing step, the cause, secrets hidden)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from zeitwork.builder.git import git_argv, git_env, pick_commit
from zeitwork.builder.limits import own_path, parse_size
from zeitwork.builder.process import clean_env
from zeitwork.builder.runner import LogShipper, _buildah_error
from zeitwork.operator.services.builds import cache_key
from zeitwork.wire.builds import BuildCreate, BuildFinish, check_git_url, check_ref

C1, C2 = "1" * 40, "2" * 40


def test_cache_key_is_stable_and_covers_every_setting() -> None:
    base: dict[str, Any] = {
        "source": f"git:{C1}",
        "git_path": None,
        "dockerfile": None,
        "build_args": {"A": "1", "B": "2"},
    }
    key = cache_key(**base)
    assert key == cache_key(**{**base, "build_args": {"B": "2", "A": "1"}})  # order-free
    assert key == cache_key(**{**base, "git_path": ""})  # None and "" are the same path
    for change in (
        {"source": f"git:{C2}"},
        {"git_path": "web"},
        {"dockerfile": "Dockerfile.prod"},
        {"build_args": {"A": "1"}},
    ):
        assert cache_key(**{**base, **change}) != key, change
    assert len(key) == 64


@pytest.mark.parametrize("ref", ["main", "release/1.2", "v1.0.0", "feature_x-y"])
def test_good_refs(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-x",
        "--upload-pack=x",
        "a..b",
        "a b",
        "a~1",
        "a^",
        "x:y",
        "/a",
        "a/",
        "a.lock",
        "@{-1}",
        "a\\b",
        "a*",
    ],
)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(ValueError, match="ref"):
        check_ref(ref)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc",
        "/srv/repo.git",
        "ext::sh -c id",
        "-uhttp://x",
        "https://host/repo with space",
        "https://user:secret@github.com/o/r.git",
        "ftp://host/r.git",
    ],
)
def test_bad_git_urls(url: str) -> None:
    with pytest.raises(ValueError):
        check_git_url(url)


def test_good_git_urls() -> None:
    for url in ("https://github.com/o/r.git", "git://127.0.0.1:9418/r.git", "ssh://git@h/r"):
        assert check_git_url(url) == url


def test_a_build_request_names_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one source"):
        BuildCreate.model_validate({})
    with pytest.raises(ValidationError, match="exactly one source"):
        BuildCreate.model_validate({"git": {"url": "https://h/r"}, "context": "a" * 64})
    with pytest.raises(ValidationError):
        BuildCreate.model_validate({"git": {"url": "https://h/r", "path": "../x"}})
    ok = BuildCreate.model_validate({"git": {"url": "https://h/r", "path": "./web/"}})
    assert ok.git is not None and ok.git.path == "web"


def test_a_success_names_its_image() -> None:
    with pytest.raises(ValidationError, match="image_id"):
        BuildFinish(lease_token=uuid.uuid4(), state="succeeded")


LS_REMOTE = (
    f"{C1}\tHEAD\n{C1}\trefs/heads/main\n{C2}\trefs/heads/dev\n"
    f"{'3' * 40}\trefs/tags/v1\n{'4' * 40}\trefs/tags/v1^{{}}\n{'5' * 40}\trefs/heads/x/main\n"
)


def test_pick_commit_prefers_the_branch_then_the_peeled_tag() -> None:
    assert pick_commit(LS_REMOTE, "main") == C1
    assert pick_commit(LS_REMOTE, "dev") == C2
    assert pick_commit(LS_REMOTE, "v1") == "4" * 40  # an annotated tag's commit
    assert pick_commit(LS_REMOTE, "refs/heads/dev") == C2
    assert pick_commit(LS_REMOTE, "nope") is None
    assert pick_commit("", "main") is None


def test_git_never_sees_the_token_on_its_command_line_and_reads_no_config() -> None:
    argv = git_argv("git", "fetch", "--", "https://h/r", C1, token=True)
    assert not any("secret-token" in a for a in argv)
    assert argv[1:3] == ["-c", "credential.helper="]  # other helpers reset first
    env = git_env(
        {"PATH": "/bin", "ZEITWORK_BUILDER_TOKEN": "zw_x", "AWS_SECRET": "s"},
        home=Path("/tmp/h"),
        token="secret-token",
    )
    assert env["ZEITWORK_GIT_TOKEN"] == "secret-token"
    assert "ZEITWORK_BUILDER_TOKEN" not in env and "AWS_SECRET" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_ALLOW_PROTOCOL"] == "http:https:git:ssh"


def test_tools_get_a_clean_environment() -> None:
    env = clean_env(
        {
            "PATH": "/usr/bin",
            "HTTPS_PROXY": "http://proxy:3128",
            "ZEITWORK_BUILDER_TOKEN": "t",
            "DATABASE_URL": "postgres://x",
            "HOME": "/root",
        },
        {"HOME": "/work/home"},
    )
    assert env == {"PATH": "/usr/bin", "HTTPS_PROXY": "http://proxy:3128", "HOME": "/work/home"}


class _NoClient:
    async def append_log(self, *_args: object) -> Any:
        raise AssertionError("not sent in this test")


def test_the_log_shipper_keeps_the_last_step_and_hides_secrets() -> None:
    shipper = LogShipper(
        client=_NoClient(),  # type: ignore[arg-type]
        build_id=uuid.uuid4(),
        token=uuid.uuid4(),
        flush_seconds=60,
        secrets=("hunter2",),
    )

    async def feed() -> None:
        await shipper.write("STEP 1/3: FROM x\nok\nSTEP 2/3: RUN ma")
        await shipper.write("ke hunter2\nboom\n")

    asyncio.run(feed())
    assert shipper.last_step == "STEP 2/3: RUN make ***"
    assert shipper.tail()[-1] == "boom"
    assert all("hunter2" not in chunk for chunk in shipper._buffer)


def test_buildah_error_is_read_without_go_dumps() -> None:
    tail = ["STEP 2/2: COPPY a b", 'Error: Unknown instruction: "COPPY" &imagebuilder.Step{Env:[]}']
    assert _buildah_error(tail) == 'Unknown instruction: "COPPY"'
    assert _buildah_error(["nothing"]) is None


def test_the_credential_helper_hands_git_the_token_from_the_environment(tmp_path: Path) -> None:
    # real git: ``git credential fill`` asks the configured helpers, as a fetch would
    argv = git_argv("git", "credential", "fill", token=True)
    env = git_env({"PATH": "/usr/bin:/bin"}, home=tmp_path, token="tok-123")
    done = subprocess.run(
        argv,
        input="protocol=https\nhost=git.example.com\n\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "username=x-access-token" in done.stdout and "password=tok-123" in done.stdout
    assert "tok-123" not in " ".join(argv)


def test_limits_parse_sizes_and_find_the_own_cgroup() -> None:
    assert parse_size("512M") == 512 * 1024**2 and parse_size("2G") == 2 * 1024**3
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="size"):
        parse_size("1.5G")
    proc = "12:cpu,cpuacct:/a/b\n4:memory:/process_api/x\n0::/\n"
    assert own_path("memory", proc) == "/process_api/x"
    assert own_path("cpu", proc) == "/a/b"
    assert own_path("pids", proc) is None
