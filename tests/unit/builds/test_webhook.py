"""GitHub webhook signatures and the decision for each kind of delivery."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from zeitwork.builds.webhook import (
    Action,
    WebhookPayloadError,
    decide,
    parse_push,
    sign,
    verify_signature,
)

SECRET = b"It's a Secret to Everybody"
BODY = b"Hello, World!"
# The example in GitHub's documentation of webhook signatures
GITHUB_EXAMPLE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _push(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ref": "refs/heads/main",
        "before": "f" * 40,
        "after": SHA,
        "deleted": False,
        "repository": {
            "full_name": "acme/shop",
            "clone_url": "https://github.com/acme/shop.git",
        },
    }
    payload.update(overrides)
    return payload


def test_valid_signature_matches_githubs_example() -> None:
    assert sign(SECRET, BODY) == GITHUB_EXAMPLE
    assert verify_signature(SECRET, BODY, GITHUB_EXAMPLE)
    assert verify_signature(SECRET, BODY, GITHUB_EXAMPLE.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header",
    [
        None,  # missing
        "",
        GITHUB_EXAMPLE.removeprefix("sha256="),  # no prefix
        "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(),  # wrong prefix
        "sha256=" + "0" * 64,  # wrong digest
        GITHUB_EXAMPLE[:-2],  # truncated
        "sha256=" + hmac.new(b"other secret", BODY, hashlib.sha256).hexdigest(),
        "sha256=\u00e9" * 3,  # not ASCII
    ],
)
def test_invalid_or_missing_signatures_do_not_verify(header: str | None) -> None:
    assert not verify_signature(SECRET, BODY, header)


def test_a_changed_body_or_an_empty_secret_does_not_verify() -> None:
    assert not verify_signature(SECRET, BODY + b" ", GITHUB_EXAMPLE)
    assert not verify_signature(b"", BODY, sign(b"", BODY))


def test_parse_push() -> None:
    push = parse_push(_push())
    assert push.branch == "main"
    assert push.after == SHA
    assert not push.deleted
    assert push.full_name == "acme/shop"
    assert push.clone_url == "https://github.com/acme/shop.git"
    assert parse_push(_push(ref="refs/tags/v1")).branch is None
    assert parse_push(_push(after="0" * 40, deleted=False)).deleted


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_push(ref=None), "no 'ref'"),
        (_push(after="main"), "'after' is not a commit id"),
        (_push(after=SHA.upper()), "'after' is not a commit id"),
        (_push(deleted="yes"), "'deleted' is not a boolean"),
        (_push(repository=[]), "'repository' is not an object"),
        (_push(repository={"full_name": 3}), "'repository.full_name' is not a string"),
    ],
)
def test_parse_push_names_the_bad_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(WebhookPayloadError, match=message):
        parse_push(payload)


def test_decide_ping_other_events_branches_deletions_and_builds() -> None:
    assert decide("ping", {"zen": "Keep it simple."}, "main").action is Action.PONG
    other = decide("issues", {}, "main")
    assert other.action is Action.IGNORE
    assert other.reason == "event 'issues' is not a push; ignored"
    assert decide(None, {}, "main").reason == "event '(none)' is not a push; ignored"
    branch = decide("push", _push(ref="refs/heads/dev"), "main")
    assert branch.action is Action.IGNORE
    assert branch.reason == "push to branch 'dev', the project builds 'main'; ignored"
    assert branch.commit is None
    tag = decide("push", _push(ref="refs/tags/v1"), "main")
    assert (tag.action, tag.reason) == (Action.IGNORE, "'refs/tags/v1' is not a branch; ignored")
    deleted = decide("push", _push(after="0" * 40, deleted=True), "main")
    assert (deleted.action, deleted.reason) == (Action.IGNORE, "branch 'main' was deleted; ignored")
    build = decide("push", _push(), "main")
    assert build.action is Action.BUILD
    assert build.commit == SHA
    assert build.push is not None
    assert build.push.full_name == "acme/shop"
