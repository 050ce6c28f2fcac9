"""GitHub push webhooks through the operator's API on a real PostgreSQL: a signed push
queues a build of its commit, a missing or wrong signature is refused with nothing recorded,
a redelivery queues nothing, ping is answered, other events and branches are ignored."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.live_server import live_operator
from zeitwork.builds.webhook import sign

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLONE = "git://127.0.0.1:9418/shop.git"


async def _project(op: Operator, **extra: Any) -> dict[str, Any]:
    r = await op.client.post(
        "/api/v1/projects",
        headers=op.headers(),
        json={"name": f"shop {uuid.uuid4().hex[:6]}", **extra},
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _secret(op: Operator, slug: str, *, rotate: bool = False) -> dict[str, Any]:
    r = await op.client.post(
        f"/api/v1/projects/{slug}/webhook", headers=op.headers(), json={"rotate": rotate}
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _push(ref: str = "refs/heads/main", after: str = COMMIT, **extra: Any) -> bytes:
    payload = {
        "ref": ref,
        "before": "f" * 40,
        "after": after,
        "deleted": False,
        "repository": {"full_name": "acme/shop", "clone_url": CLONE},
        **extra,
    }
    return json.dumps(payload).encode()


async def _deliver(
    op: Operator,
    slug: str,
    body: bytes,
    *,
    secret: str | None,
    event: str = "push",
    delivery: str | None = None,
    signature: str | None = None,
) -> Any:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
    }
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret.encode(), body)
    return await op.client.post(f"/api/v1/webhooks/github/{slug}", content=body, headers=headers)


async def _builds(op: Operator, project_id: str) -> list[tuple[Any, ...]]:
    return await op.sql(
        "SELECT git_commit, git_ref, git_url, reason, state FROM builds WHERE project_id = %s",
        (project_id,),
    )


async def _deliveries(op: Operator) -> list[tuple[Any, ...]]:
    return await op.sql("SELECT delivery_id, event, build_id FROM webhook_deliveries")


async def test_a_signed_push_to_the_branch_queues_a_build_of_after(operator: Operator) -> None:
    op = operator
    project = await _project(op, github_repo="acme/shop")
    shown = await _secret(op, project["slug"])
    assert shown["path"] == f"/api/v1/webhooks/github/{project['slug']}"
    assert shown["created"] is True
    assert shown["branch"] == "main"
    assert len(shown["secret"]) == 64
    r = await _deliver(op, project["slug"], _push(), secret=shown["secret"], delivery="d-1")
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "queued"
    assert answer["commit"] == COMMIT
    assert await _builds(op, project["id"]) == [(COMMIT, "main", CLONE, "webhook", "queued")]
    rows = await _deliveries(op)
    assert [(d, e, str(b)) for d, e, b in rows] == [("d-1", "push", answer["build_id"])]
    # shown again: the same secret, not a new one
    again = await _secret(op, project["slug"])
    assert (again["secret"], again["created"]) == (shown["secret"], False)


async def test_missing_or_wrong_signatures_are_refused_and_nothing_is_recorded(
    operator: Operator,
) -> None:
    op = operator
    project = await _project(op)
    secret = (await _secret(op, project["slug"]))["secret"]
    body = _push()
    wrong = sign(b"not the secret", body)
    cases = {
        "missing": await _deliver(op, project["slug"], body, secret=None),
        "wrong": await _deliver(op, project["slug"], body, secret=None, signature=wrong),
        "no prefix": await _deliver(
            op, project["slug"], body, secret=None, signature=sign(secret.encode(), body)[7:]
        ),
        "other body": await _deliver(
            op,
            project["slug"],
            _push(after="a" * 40),
            secret=None,
            signature=sign(secret.encode(), body),
        ),
        "unknown project": await _deliver(op, "no-such-project", body, secret=secret),
    }
    for name, r in cases.items():
        assert r.status_code == 401, (name, r.text)
        assert secret not in r.text
        assert r.json()["detail"].startswith("X-Hub-Signature-256 is missing or does not match")
    assert await _builds(op, project["id"]) == []
    assert await _deliveries(op) == []


async def test_a_project_without_a_secret_refuses_every_delivery(operator: Operator) -> None:
    op = operator
    project = await _project(op)
    body = _push()
    r = await _deliver(op, project["slug"], body, secret=None, signature=sign(b"", body))
    assert r.status_code == 401
    assert await _deliveries(op) == []


async def test_a_redelivery_queues_no_second_build(operator: Operator) -> None:
    op = operator
    project = await _project(op)
    secret = (await _secret(op, project["slug"]))["secret"]
    first = await _deliver(op, project["slug"], _push(), secret=secret, delivery="same-id")
    assert first.json()["status"] == "queued"
    again = await _deliver(op, project["slug"], _push(), secret=secret, delivery="same-id")
    assert again.status_code == 202
    assert again.json() == {
        "status": "duplicate",
        "reason": "duplicate delivery",
        "build_id": None,
        "commit": None,
    }
    assert len(await _builds(op, project["id"])) == 1


async def test_ping_other_events_branches_and_repositories(operator: Operator) -> None:
    op = operator
    project = await _project(op, github_repo="acme/shop")
    secret = (await _secret(op, project["slug"]))["secret"]
    slug = project["slug"]
    ping = await _deliver(
        op,
        slug,
        json.dumps({"zen": "Keep it simple.", "hook_id": 1}).encode(),
        secret=secret,
        event="ping",
    )
    assert (ping.status_code, ping.json()["status"]) == (200, "pong")
    issue = await _deliver(op, slug, b'{"action": "opened"}', secret=secret, event="issues")
    assert issue.status_code == 202
    assert issue.json()["reason"] == "event 'issues' is not a push; ignored"
    branch = await _deliver(op, slug, _push(ref="refs/heads/dev"), secret=secret)
    assert branch.status_code == 202
    assert branch.json()["reason"] == "push to branch 'dev', the project builds 'main'; ignored"
    deleted = await _deliver(op, slug, _push(after="0" * 40, deleted=True), secret=secret)
    assert deleted.json()["reason"] == "branch 'main' was deleted; ignored"
    other_repo = _push(repository={"full_name": "mallory/shop", "clone_url": CLONE})
    repo = await _deliver(op, slug, other_repo, secret=secret)
    assert repo.json()["status"] == "ignored"
    assert "'mallory/shop' is not the project's 'acme/shop'" in repo.json()["reason"]
    assert await _builds(op, project["id"]) == []
    assert len(await _deliveries(op)) == 5


async def test_bad_payloads_are_4xx_and_not_recorded(operator: Operator) -> None:
    op = operator
    project = await _project(op)
    secret = (await _secret(op, project["slug"]))["secret"]
    slug = project["slug"]
    not_json = await _deliver(op, slug, b"payload=%7B%7D", secret=secret)
    assert not_json.status_code == 422, not_json.text
    assert "not JSON" in not_json.json()["detail"]
    bad_after = await _deliver(op, slug, _push(after="main"), secret=secret)
    assert bad_after.status_code == 422
    assert "'after' is not a commit id" in bad_after.json()["detail"]
    bad_url = _push(repository={"full_name": "acme/shop", "clone_url": "file:///etc"})
    url = await _deliver(op, slug, bad_url, secret=secret)
    assert url.status_code == 422
    no_delivery = await op.client.post(
        f"/api/v1/webhooks/github/{slug}",
        content=_push(),
        headers={
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": sign(secret.encode(), _push()),
        },
    )
    assert no_delivery.status_code == 422
    too_big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    big = await _deliver(op, slug, too_big, secret=secret)
    assert big.status_code == 413
    assert await _deliveries(op) == []
    assert await _builds(op, project["id"]) == []


async def test_rotate_replaces_the_secret(operator: Operator) -> None:
    op = operator
    project = await _project(op)
    old = (await _secret(op, project["slug"]))["secret"]
    new = await _secret(op, project["slug"], rotate=True)
    assert new["created"] is True
    assert new["secret"] != old
    refused = await _deliver(op, project["slug"], _push(), secret=old)
    assert refused.status_code == 401
    accepted = await _deliver(op, project["slug"], _push(), secret=new["secret"])
    assert accepted.status_code == 202
    unauthenticated = await op.client.post(
        f"/api/v1/projects/{project['slug']}/webhook", json={"rotate": True}
    )
    assert unauthenticated.status_code == 401


async def _zeitwork(url: str, token: str, data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPERATOR_URL", "ZEITWORK_TOKEN")}
    env |= {"OPERATOR_URL": url, "ZEITWORK_TOKEN": token, "ZEITWORK_DATA_DIR": str(data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeitwork",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _field(out: str, name: str) -> str:
    for line in out.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name!r} line in {out!r}")


@pytest.mark.slow
async def test_cli_shows_the_url_and_secret_that_github_signs_with(
    operator: Operator, tmp_path: Path
) -> None:
    op = operator
    project = await _project(op)
    async with live_operator(op) as url:
        code, out, err = await _zeitwork(
            url, op.admin_token, tmp_path, "apps", "webhook", project["slug"]
        )
        assert code == 0, err
        assert _field(out, "Payload URL") == f"{url}/api/v1/webhooks/github/{project['slug']}"
        assert _field(out, "Content type") == "application/json"
        secret = _field(out, "Secret")
        assert "Pushes to 'main' are built" in out
        code, again, _ = await _zeitwork(
            url, op.admin_token, tmp_path, "apps", "webhook", project["slug"]
        )
        assert (code, _field(again, "Secret")) == (0, secret)
        code, rotated, _ = await _zeitwork(
            url, op.admin_token, tmp_path, "apps", "webhook", project["slug"], "--rotate"
        )
        assert code == 0
        new = _field(rotated, "Secret")
        assert new != secret
        assert "The secret is new" in rotated
        code, _, err = await _zeitwork(url, op.admin_token, tmp_path, "apps", "webhook", "nope")
        assert code == 1
        assert err.startswith("zeitwork: ")
    assert (await _deliver(op, project["slug"], _push(), secret=secret)).status_code == 401
    queued = await _deliver(op, project["slug"], _push(), secret=new)
    assert queued.json()["status"] == "queued"
