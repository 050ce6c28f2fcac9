"""The app verbs end to end against a scripted operator on a real socket: what they send,
what they print, their exit status, and the followed streams across reconnections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.cli.fake_operator import FakeOperator, problem, serving, sse
from tests.unit.cli.wire_factories import (
    NODE_B,
    PROJECT_ID,
    T0,
    domain,
    event,
    instance,
    node,
    project,
    release,
    rid,
    status,
)
from zeitwork.cli.logs_cmd import since_param
from zeitwork.cli.main import app
from zeitwork.core.states import HealthState, InstanceState, ReleaseState, RolloutState
from zeitwork.wire.releases import EnvOut, RolloutStrategy
from zeitwork.wire.routes import CorsOverride, EdgePolicyOverride, HeadersOverride

EARLIER = T0 - timedelta(hours=1)
H = HealthState
S = InstanceState
IMAGE = "6f1c2b8e-0000-4000-8000-000000000000"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOperator]:
    with serving(FakeOperator()) as operator:
        monkeypatch.setenv("OPERATOR_URL", operator.url)
        monkeypatch.setenv("ZEITWORK_TOKEN", "zw_test")
        monkeypatch.setenv("ZEITWORK_DATA_DIR", str(tmp_path))
        yield operator


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def _rolling_v1_to_v2(fake: FakeOperator) -> None:
    tuned = RolloutStrategy(min_healthy_time=0, drain_timeout=1)
    current = release(1, ReleaseState.ACTIVE, current=True, with_rollout=None, strategy=tuned)
    old = instance(1, 1, health=H.HEALTHY, serving=True)
    fake.created = release(2)
    fake.release_after_polls = [release(2), release(2, ReleaseState.ACTIVE, current=True)]
    fake.statuses = [
        status([old], current),
        status([instance(2, 2, health=H.HEALTHY, serving=True, node=NODE_B)], current),
    ]
    fake.event_attempts = [
        sse(
            *(
                (str(e.seq), e.model_dump_json())
                for e in (
                    event(
                        1, "instance.healthy", "an hour ago", instance_n=1, release_v=1, at=EARLIER
                    ),
                    event(2, "release.created", "v2 created (deploy)", release_v=2),
                    event(
                        3,
                        "instance.placed",
                        "placed",
                        instance_n=2,
                        release_v=2,
                        rollout_v=2,
                        node=NODE_B,
                    ),
                    event(4, "instance.healthy", "healthy", instance_n=2, release_v=2),
                    event(5, "instance.healthy", "another app's", instance_n=8, release_v=7),
                    event(
                        6,
                        "instance.serving",
                        "joined the route",
                        instance_n=2,
                        release_v=2,
                        rollout_v=2,
                    ),
                    event(
                        7,
                        "instance.draining",
                        "left the route",
                        instance_n=1,
                        release_v=1,
                        rollout_v=2,
                    ),
                    event(8, "instance.stopped", "stopped", instance_n=1, release_v=1),
                    event(9, "rollout.succeeded", "v2 is current", release_v=2, rollout_v=2),
                )
            )
        )
    ]


def test_deploy_creates_the_app_binds_the_domain_and_follows_until_current(
    fake: FakeOperator,
) -> None:
    _rolling_v1_to_v2(fake)
    code, out, err = _run(
        "deploy", "--app", "web", "--image", IMAGE, "--port", "8080", "--domain", "web.test",
        "--env", "A=1", "--health-path", "/healthz", "--strategy", "bluegreen",
    )  # fmt: skip
    assert code == 0, err
    assert fake.calls("POST", "/api/v1/projects") == [({}, {"name": "web"})]
    ((_, body),) = fake.calls("POST", f"/projects/{PROJECT_ID}/releases")
    assert body["image"] == IMAGE
    assert body["port"] == 8080
    assert body["env"] == {"A": "1"}
    assert body["health_check"]["type"] == "http"
    assert body["health_check"]["path"] == "/healthz"
    tuned = {"min_healthy_time": 0.0, "drain_timeout": 1.0, "type": "bluegreen"}
    assert body["strategy"] == {**RolloutStrategy().model_dump(mode="json"), **tuned}
    assert "replicas" not in body  # as now
    assert fake.calls("POST", "/api/v1/domains") == [
        ({}, {"name": "web.test", "project_id": str(PROJECT_ID), "environment": "production"})
    ]
    follow = {"project": str(PROJECT_ID), "environment": "production", "follow": "true"}
    assert {**follow, "limit": "200"} in [q for q, _ in fake.calls("GET", "/api/v1/events")]
    texts = [line.split("s  ", 1)[-1] for line in out.splitlines()]
    new, old = f"instance {str(rid(2))[:8]} (v2)", f"instance {str(rid(1))[:8]} (v1)"
    assert "an hour ago" not in out and "another app's" not in out
    for expected in (
        "v2 created (deploy)",
        "v2 is current",
        f"{new} placed on node bbbbbbbb",
        f"{new} healthy",
        f"{new} serving",
        f"{old} draining",
        f"{old} stopped",
    ):
        assert expected in texts, out
    assert texts.index(f"{old} serving") < texts.index(f"{new} placed on node bbbbbbbb")
    assert texts.index(f"{new} placed on node bbbbbbbb") < texts.index(f"{new} serving")
    assert f"{new} stopped" not in texts
    assert not any("events unavailable" in t for t in texts)
    assert out.splitlines()[0] == "domain web.test -> web (production)"
    assert "v2 is the current release (" in out.splitlines()[-1]


def test_old_deploy_flags_still_work_on_the_default_app(fake: FakeOperator) -> None:
    fake.projects = [project("default")]
    fake.created = release(1, ReleaseState.PENDING)
    code, out, _ = _run("deploy", "--image", IMAGE, "--replicas", "2", "--vcpu", "0.5", "--detach")
    assert code == 0
    assert fake.calls("POST", "/api/v1/projects") == []
    ((_, body),) = fake.calls("POST", "/releases")
    assert body["replicas"] == 2
    assert body["resources"] == {"vcpu": 0.5, "memory": 128}
    assert out == "v1 of default (production): pending\n"
    assert fake.calls("GET", "/status") == []


def test_a_failed_release_exits_1_with_its_cause_polling_without_events(
    fake: FakeOperator,
) -> None:
    cause = "instance 00000002 of v2 failed its health check: GET /healthz -> 500"
    fake.created = release(2)
    fake.release_after_polls = [
        release(2),
        release(2, ReleaseState.FAILED, error=cause, with_rollout=RolloutState.FAILED),
    ]
    fake.statuses = [
        status([instance(2, 2, S.STARTING)]),
        status([instance(2, 2, S.STOPPED)]),
    ]
    fake.events_route_missing = True  # 404: poll only
    code, out, err = _run("deploy", "--app", "web", "--image", IMAGE)
    assert code == 1
    assert err.splitlines()[-1] == f"zeitwork: v2 failed: {cause}"
    assert "events unavailable, polling" in out
    assert f"instance {str(rid(2))[:8]} (v2) starting" in out
    assert f"instance {str(rid(2))[:8]} (v2) stopped" in out


def test_an_api_refusal_is_one_line(fake: FakeOperator) -> None:
    fake.created = problem(404, "image 'nope:1' is not known: import it or give its id")
    code, out, err = _run("deploy", "--app", "web", "--image", "nope:1")
    assert code == 1
    assert out == ""
    assert err == (
        f"zeitwork: POST /api/v1/projects/{PROJECT_ID}/releases: image 'nope:1' is not known: "
        "import it or give its id\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--health-path", "/x", "--no-health"], "give one of --health-path"),
        (["--health-path", "no-slash"], "--health-path 'no-slash': expected a path"),
        (["--env", "A"], "expected NAME=VALUE"),
    ],
)
def test_deploy_checks_its_options_before_calling(
    fake: FakeOperator, args: list[str], message: str
) -> None:
    code, _, err = _run("deploy", "--app", "web", "--image", IMAGE, *args)
    assert code == 2
    assert message in err
    assert fake.seen == []


def test_deploy_detach_json_prints_the_release(fake: FakeOperator) -> None:
    fake.created = release(4, ReleaseState.PENDING)
    code, out, err = _run("deploy", "--app", "web", "--image", IMAGE, "--detach", "--json")
    assert code == 0
    assert json.loads(out)["version"] == 4
    assert "v4 of web" in err


def test_deploy_json_follows_then_prints_the_final_release(fake: FakeOperator) -> None:
    _rolling_v1_to_v2(fake)
    code, out, err = _run("deploy", "--app", "web", "--image", IMAGE, "--json")
    assert code == 0
    final = json.loads(out)
    assert (final["version"], final["state"], final["current"]) == (2, "active", True)
    assert "serving" in err


def test_rollback_to_a_version(fake: FakeOperator) -> None:
    fake.created = release(5, ReleaseState.PENDING, reason="rollback", source=2)
    code, out, _ = _run("rollback", "web", "v2", "--detach")
    assert code == 0
    assert fake.calls("POST", "/projects/web/rollback") == [
        ({}, {"environment": "production", "version": 2})
    ]
    assert out == "v5 of web (production): pending\n"
    code, _, err = _run("rollback", "web", "two")
    assert code == 2
    assert "'two' is not a release version" in err


def test_releases_table_and_json(fake: FakeOperator) -> None:
    fake.releases = [
        release(2, ReleaseState.FAILED, error="instance 1 of v2 exited with code 1"),
        release(1, ReleaseState.ACTIVE, current=True),
    ]
    code, out, _ = _run("releases", "web")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "IMAGE",
        "STATE",
        "REPLICAS",
        "REASON",
        "CREATED",
        "CAUSE",
    ]
    assert lines[1].split()[:3] == ["v2", "sha256:020202020202", "failed"]
    assert lines[1].endswith("instance 1 of v2 exited with code 1")
    assert "active (current)" in lines[2]
    code, out, _ = _run("releases", "web", "--json")
    assert [r["version"] for r in json.loads(out)] == [2, 1]


def test_status_shows_release_instances_domains(fake: FakeOperator) -> None:
    fake.statuses = [
        status(
            [instance(1, 3, health=H.HEALTHY, serving=True)],
            release(3, ReleaseState.ACTIVE, current=True),
            domains=("web.test",),
        )
    ]
    code, out, _ = _run("status", "web")
    assert code == 0
    assert out.splitlines()[0] == "app web (production): 2 replica(s) desired"
    assert "  domain web.test: http://web.test/" in out
    table_rows = out.split("\n\n", 1)[1].splitlines()
    assert table_rows[0].split()[:4] == ["INSTANCE", "NODE", "RELEASE", "STATE"]
    assert table_rows[1].split()[:5] == ["00000001", "aaaaaaaa", "v3", "running,", "serving"]
    code, out, _ = _run("status", "web", "--json")
    assert json.loads(out)["domains"] == ["web.test"]


def test_status_of_an_unknown_app(fake: FakeOperator) -> None:
    code, _, err = _run("status", "nope")
    assert code == 1
    assert err == "zeitwork: GET /api/v1/projects/nope/status: project 'nope' does not exist\n"


def test_apps_lists_each_with_its_release(fake: FakeOperator) -> None:
    fake.projects = [project("web")]
    fake.statuses = [status([instance(1, 3, serving=True)], release(3, ReleaseState.ACTIVE))]
    code, out, _ = _run("apps")
    assert code == 0
    assert out.splitlines()[1].split() == ["web", "v3", "active", "1/2", "serving", "-"]


def test_scale(fake: FakeOperator) -> None:
    fake.statuses = [status([], release(3, ReleaseState.ACTIVE), replicas=3)]
    code, out, _ = _run("scale", "web", "3")
    assert code == 0
    assert fake.calls("PUT", "/projects/web/scale") == [
        ({}, {"environment": "production", "replicas": 3})
    ]
    assert out == "web (production): 3 replica(s) of v3\n"


def test_env_ls_never_prints_a_secret_and_set_sends_secrets_apart(fake: FakeOperator) -> None:
    fake.env = EnvOut(environment="production", env={"MODE": "prod"}, secret_names=["API_KEY"])
    code, out, _ = _run("env", "ls", "web")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "VALUE"],
        ["API_KEY", "(secret)"],
        ["MODE", "prod"],
    ]
    fake.created = release(6, ReleaseState.PENDING, reason="config")
    code, out, _ = _run("env", "set", "web", "API_KEY=s3cret", "--secret", "--detach")
    assert code == 0
    assert "s3cret" not in out
    ((_, body),) = fake.calls("PATCH", "/projects/web/env")
    assert body == {
        "environment": "production",
        "set": {},
        "secrets": {"API_KEY": "s3cret"},
        "unset": [],
    }
    code, _, _ = _run("env", "unset", "web", "MODE", "--detach")
    assert code == 0
    assert fake.calls("PATCH", "/projects/web/env")[1][1]["unset"] == ["MODE"]


def _log(n: int, text: str) -> tuple[str, str]:
    line = {
        "ts": T0.isoformat(),
        "instance_id": str(rid(n)),
        "node_id": None,
        "release": "v3",
        "stream": "stdout",
        "line": text,
    }
    return (str(n), json.dumps(line))


def test_logs_follow_resumes_after_a_drop_without_duplicates(fake: FakeOperator) -> None:
    fake.log_attempts = [
        sse(_log(1, "one"), _log(2, "two")),
        sse(
            _log(2, "two"), (None, '{"notice": "node x: unreachable, retrying"}'), _log(3, "three")
        ),
    ]  # then 401: the CLI stops with that cause
    code, out, err = _run("logs", "web", "-f", "--since", "10m", "--release", "v3")
    assert code == 1
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["one", "two", "three"]
    assert out.splitlines()[0].startswith("2026-12-07T03:00:00.000Z v3 00000001: ")
    assert "zeitwork: node x: unreachable, retrying" in err
    assert "reconnecting in" in err
    assert err.splitlines()[-1].endswith("token revoked")
    assert fake.last_event_ids == [None, "2", "3"]
    query = fake.calls("GET", "/projects/web/logs")[0][0]
    assert (query["follow"], query["format"], query["release"]) == ("true", "sse", "v3")
    assert (query["since"], query["tail"]) == ("10m", "100")


@pytest.mark.parametrize(
    ("given", "sent"),
    [("10m", "10m"), ("90s", "90s"), ("2026-12-07T02:00:00", "2026-12-07T02:00:00.000000Z")],
)
def test_since_is_sent_as_the_operator_reads_it(given: str, sent: str) -> None:
    assert since_param(given) == sent
    assert since_param("1.5m").endswith("Z")


def test_events_json_and_follow(fake: FakeOperator) -> None:
    fake.events = [event(1, "release.created", "v1 created"), event(2, "instance.placed", "p")]
    code, out, _ = _run("events", "web")
    assert code == 0
    assert out.splitlines() == [
        "2026-12-07 03:00:00 release.created: v1 created",
        "2026-12-07 03:00:00 instance.placed: p",
    ]
    assert fake.calls("GET", "/api/v1/events")[0][0] == {
        "project": "web",
        "after": "0",
        "limit": "1000",
    }
    fake.event_attempts = [sse(*((str(e.seq), e.model_dump_json()) for e in fake.events))]
    fake.event_attempts.append(problem(403, "not an admin token"))
    code, out, err = _run("events", "web", "-f", "--json", "--kind", "instance.")
    assert code == 1
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]
    assert err.splitlines()[-1].endswith("not an admin token")


def test_nodes_drain_by_hostname(fake: FakeOperator) -> None:
    fake.nodes = [node("host-a"), node("host-b", NODE_B)]
    code, out, _ = _run("nodes", "drain", "host-b")
    assert code == 0
    assert out == f"node host-b ({NODE_B}): draining\n"
    assert fake.calls("POST", f"/nodes/{NODE_B}/drain")
    code, out, _ = _run("nodes", "undrain", "bbbbbbbb")
    assert out == f"node host-b ({NODE_B}): ready\n"
    code, _, err = _run("nodes", "drain", "host-c")
    assert code == 1
    assert "no node host-c" in err


@pytest.mark.parametrize(
    ("verb", "route"), [("images", "images"), ("instances", "instances"), ("domains", "domains")]
)
def test_every_list_verb_prints_json(fake: FakeOperator, verb: str, route: str) -> None:
    code, out, err = _run(verb, "ls", "--json")
    assert code == 0, err
    assert json.loads(out) == []
    assert fake.calls("GET", f"/api/v1/{route}")


def test_domains_policy_prints_the_policy_the_operator_answers(fake: FakeOperator) -> None:
    fake.domains = [domain("web.test")]
    code, out, err = _run(
        "domains", "policy", "web.test", "--cors-origin", "https://a.test", "--hsts-max-age", "0"
    )
    assert code == 0, err
    name, _, shown = out.partition(": edge policy ")
    assert name == "domain web.test"
    assert json.loads(shown) == EdgePolicyOverride(
        cors=CorsOverride(origins=["https://a.test"]), headers=HeadersOverride(hsts_max_age=0)
    ).model_dump(mode="json")
