"""Fetching a repository at one exact commit: the ref resolved first (``git ls-remote``),
then a shallow fetch of that commit into an empty repository and a detached checkout.

No shell and no option from input reaches git's command line: the URL and ref were checked
(``wire.builds``) and come after ``--``. A private repository's token is handed to git by
a credential helper that reads it from the environment (``ZEITWORK_GIT_TOKEN``), so it is
never on a command line or in the build log. Git reads no system or user configuration,
never prompts, and speaks only http(s), git and ssh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from zeitwork.builder.process import Sink, StepFailed, capture, clean_env, run

TOKEN_ENV = "ZEITWORK_GIT_TOKEN"  # noqa: S105 - the variable's name, not a secret
# A constant helper (no input in it): git runs it with "get" and reads username/password.
_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username=x-access-token; '
    f'echo "password=${TOKEN_ENV}"; }}; f'
)
LS_REMOTE_TIMEOUT = 60.0


def git_env(base: Mapping[str, str], home: Path, token: str | None) -> dict[str, str]:
    extra = {
        "HOME": str(home),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ALLOW_PROTOCOL": "http:https:git:ssh",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    if token:
        extra[TOKEN_ENV] = token
    return clean_env(base, extra)


def git_argv(git: str, *args: str, token: bool) -> list[str]:
    config = ["-c", "credential.helper="]
    if token:
        config += ["-c", f"credential.helper={_HELPER}"]
    return [git, *config, "-c", "protocol.version=2", "-c", "advice.detachedHead=false", *args]


def pick_commit(listing: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output: a branch, else a tag (an
    annotated tag's peeled commit), else a full ``refs/...`` name (pure)."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if len(sha) in (40, 64) and name:
            found[name.strip()] = sha.strip()
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in found and (name.startswith("refs/") or name == "HEAD"):
            return found[name]
    return None


async def resolve(git: str, url: str, ref: str, *, env: Mapping[str, str], token: bool) -> str:
    """The commit ``ref`` points at in ``url`` (``StepFailed`` naming it when it is not
    there or the repository cannot be reached)."""
    argv = git_argv(git, "ls-remote", "--", url, ref, token=token)
    status, output = await capture(argv, env=env, limit=LS_REMOTE_TIMEOUT)
    if status != 0:
        last = _last_lines(output)
        raise StepFailed(f"cannot read the repository {url}: {last}", step="fetch source")
    commit = pick_commit(output, ref)
    if commit is None:
        raise StepFailed(
            f"the ref {ref!r} does not exist in {url} (looked for the branch "
            f"refs/heads/{ref} and the tag refs/tags/{ref})",
            step="fetch source",
        )
    return commit


async def checkout(
    git: str,
    url: str,
    commit: str,
    dest: Path,
    *,
    ref: str | None,
    env: Mapping[str, str],
    token: bool,
    sink: Sink,
    deadline: float,
    stop: asyncio.Event,
) -> None:
    """``dest`` holds the work tree of exactly ``commit`` (shallow)."""
    step = "fetch source"
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)

    async def git_run(*args: str) -> int:
        return await run(
            git_argv(git, *args, token=token),
            step=step,
            env=env,
            sink=sink,
            deadline=deadline,
            stop=stop,
            cwd=dest,
        )

    if await git_run("init", "-q", ".") != 0:
        raise StepFailed("git init failed", step=step)
    fetched = await git_run("fetch", "-q", "--depth", "1", "--no-tags", "--", url, commit)
    if fetched != 0 and ref is not None:
        # a server that refuses a want by id: the branch's tip, which must be the commit
        fetched = await git_run(
            "fetch", "-q", "--depth", "1", "--no-tags", "--", url, f"refs/heads/{ref}"
        )
    if fetched != 0:
        raise StepFailed(f"cannot fetch commit {commit} from {url}", step=step)
    status, head = await capture(
        git_argv(git, "rev-parse", "FETCH_HEAD", token=False), env=env, limit=30, cwd=dest
    )
    if status != 0 or head.strip() != commit:
        raise StepFailed(
            f"the fetched commit is {head.strip()[:40]}, not {commit} (the branch moved?)",
            step=step,
        )
    if await git_run("checkout", "-q", "--detach", commit) != 0:
        raise StepFailed(f"cannot check out {commit}", step=step)


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"
