"""The console's pages, rendered from the API's JSON answers (pure: data in, HTML out).

Every page is one ``layout``: a skip link, the navigation, one ``<main>`` with one ``<h1>``.
Tables have captions and header cells; forms have labels; live lists are ``role="log"``
(polite live regions) filled by ``console.js`` from the API's event and log streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from zeitwork.operator.console.markup import Html, el
from zeitwork.operator.console.session import CSRF_FIELD

Json = dict[str, Any]

DONE_MESSAGES: Mapping[str, str] = {
    "deploy": "Deploy started: the new release is rolling out.",
    "rollback": "Rollback started: a new release made from the earlier one is rolling out.",
    "scale": "Replica count changed.",
    "drain": "Node draining: its instances are being replaced elsewhere.",
    "undrain": "Node takes instances again.",
}


def layout(
    *, title: str, body: Iterable[object], assets: Mapping[str, str], csrf: str | None, nav: str
) -> Html:
    links = [("apps", "/", "Apps"), ("nodes", "/nodes", "Nodes")]
    navigation = None
    if csrf is not None:
        navigation = el(
            "nav",
            el(
                "ul",
                [
                    el("li", el("a", label, href=href, aria_current="page" if key == nav else None))
                    for key, href, label in links
                ],
            ),
            el(
                "form",
                _csrf(csrf),
                el("button", "Sign out", type="submit", class_="link"),
                method="post",
                action="/sign-out",
            ),
            aria_label="Main",
        )
    page = el(
        "html",
        el(
            "head",
            el("meta", charset="utf-8"),
            el("meta", name="viewport", content="width=device-width, initial-scale=1"),
            el("title", f"{title} · Zeitwork"),
            el("link", rel="stylesheet", href=assets["css"]),
            el("script", src=assets["js"], defer=True),
        ),
        el(
            "body",
            el("a", "Skip to content", href="#main", class_="skip"),
            el("header", el("a", "Zeitwork", href="/", class_="brand"), navigation),
            el("main", body, id="main", tabindex="-1"),
        ),
        lang="en",
    )
    return Html("<!doctype html>\n" + page)


def notice(*, error: str | None = None, done: str | None = None) -> Html | None:
    if error:
        return el("p", error, role="alert", class_="flash error", tabindex="-1", data_focus=True)
    message = DONE_MESSAGES.get(done or "")
    if message:
        return el("p", message, role="status", class_="flash ok", tabindex="-1", data_focus=True)
    return None


def sign_in(*, error: str | None) -> list[Html | None]:
    return [
        el("h1", "Sign in"),
        el("p", error, role="alert", class_="flash error", id="sign-in-error") if error else None,
        el(
            "form",
            el("label", "API token", for_="token"),
            el(
                "input",
                id="token",
                name="token",
                type="password",
                autocomplete="off",
                required=True,
                autofocus=True,
                spellcheck="false",
                aria_describedby="token-help sign-in-error" if error else "token-help",
            ),
            el(
                "p",
                "An admin token (zw_...). It is kept in a cookie this browser sends only to "
                "this console, and never shown again.",
                id="token-help",
                class_="help",
            ),
            el("button", "Sign in", type="submit"),
            method="post",
            action="/sign-in",
            class_="stack narrow",
        ),
    ]


# -- apps ------------------------------------------------------------------------------------


def apps(
    rows: Sequence[tuple[Json, Json | None]], *, notice_html: Html | None
) -> list[Html | None]:
    """``rows``: (project, its production status or None when it has none)."""
    head = el(
        "thead",
        el(
            "tr",
            [
                el("th", name, scope="col")
                for name in ("App", "Release", "Health", "Requests", "Domains")
            ],
        ),
    )
    body = [_app_row(project, status) for project, status in rows]
    table = (
        el("table", el("caption", "Apps in production"), head, el("tbody", body))
        if rows
        else el("p", "No apps yet. Deploy one with ", el("code", "zeitwork deploy"), ".")
    )
    return [el("h1", "Apps"), notice_html, table]


def _app_row(project: Json, status: Json | None) -> Html:
    if status is None:  # no production environment: nothing to show on an app page yet
        return el(
            "tr",
            el("th", project["name"], scope="row"),
            el(
                "td",
                "not deployed (",
                el("code", f"zeitwork deploy --app {project['slug']}"),
                ")",
                colspan="4",
            ),
        )
    link = el("a", project["name"], href=f"/apps/{quote(project['slug'], safe='')}")
    return el(
        "tr",
        el("th", link, scope="row"),
        el("td", _release_summary(status)),
        el("td", health_summary(status.get("instances", []), status.get("replicas", 0))),
        el("td", metrics_summary(status.get("metrics"))),
        el("td", ", ".join(status.get("domains", [])) or "none"),
    )


def _release_summary(status: Json) -> str:
    current = status.get("current_release")
    rollout = status.get("rollout")
    text = "none" if current is None else f"v{current['version']}"
    if rollout is not None:
        text += f" (rolling out, {rollout['state']})"
    return text


def health_summary(instances: Sequence[Json], replicas: int) -> str:
    """``2/3 healthy`` over the instances meant to run (``1 unhealthy`` added when so)."""
    live = [i for i in instances if i.get("desired_state") == "running"]
    healthy = sum(1 for i in live if i.get("health") == "healthy")
    unhealthy = sum(1 for i in live if i.get("health") == "unhealthy")
    text = f"{healthy}/{replicas} healthy"
    if unhealthy:
        text += f", {unhealthy} unhealthy"
    return text


def metrics_summary(metrics: Json | None) -> str:
    """Request figures of the last window when the status carries them."""
    if not metrics:
        return "no figures"
    parts = []
    rate = metrics.get("requests_per_s")
    if isinstance(rate, int | float):
        parts.append(f"{rate:.1f} req/s")
    errors = metrics.get("error_rate")
    if isinstance(errors, int | float):
        parts.append(f"{errors * 100:.1f}% errors")
    p50, p99 = metrics.get("p50_ms"), metrics.get("p99_ms")
    if isinstance(p50, int | float) and isinstance(p99, int | float):
        parts.append(f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    return ", ".join(parts) or "no figures"


# -- one app ---------------------------------------------------------------------------------


def app(
    *,
    status: Json,
    releases: Sequence[Json],
    nodes: Mapping[str, Json],
    csrf: str,
    notice_html: Html | None,
) -> list[Html | None]:
    slug = status["slug"]
    base = f"/apps/{quote(slug, safe='')}"
    events_url = "/api/v1/events?" + urlencode({"project": slug, "follow": "true", "limit": 20})
    logs_url = f"/api/v1/projects/{quote(slug, safe='')}/logs?" + urlencode(
        {"follow": "true", "format": "sse", "tail": 50}
    )
    return [
        el("h1", status["name"]),
        notice_html,
        _summary(status),
        _actions(base, status, csrf),
        _releases(base, releases, csrf),
        _instances(status.get("instances", []), nodes),
        el(
            "section",
            el("h2", "Events", id="events-title"),
            _live_list("events", events_url, "events-title"),
            aria_labelledby="events-title",
        ),
        el(
            "section",
            el("h2", "Logs", id="logs-title"),
            _live_list("logs", logs_url, "logs-title"),
            aria_labelledby="logs-title",
        ),
    ]


def _summary(status: Json) -> Html:
    current = status.get("current_release")
    facts = [
        ("Environment", status.get("environment", "production")),
        ("Current release", _release_summary(status)),
        ("Image", "none" if current is None else current.get("image_ref") or "an uploaded image"),
        ("Replicas", str(status.get("replicas", 0))),
        ("Health", health_summary(status.get("instances", []), status.get("replicas", 0))),
        ("Requests", metrics_summary(status.get("metrics"))),
        ("Domains", ", ".join(status.get("domains", [])) or "none"),
    ]
    return el(
        "section",
        el("h2", "Summary", class_="visually-hidden", id="summary-title"),
        el("dl", [(el("dt", k), el("dd", v)) for k, v in facts], class_="facts"),
        id="summary",
        aria_labelledby="summary-title",
    )


def _actions(base: str, status: Json, csrf: str) -> Html:
    return el(
        "section",
        el("h2", "Actions", id="actions-title"),
        el(
            "div",
            el(
                "form",
                _csrf(csrf),
                el("label", "Image", for_="deploy-image"),
                el(
                    "input",
                    id="deploy-image",
                    name="image",
                    required=True,
                    placeholder="registry.example.com/shop:v2 or an image id",
                    autocomplete="off",
                ),
                el("button", "Deploy", type="submit"),
                method="post",
                action=f"{base}/deploy",
                class_="inline",
            ),
            el(
                "form",
                _csrf(csrf),
                el("label", "Replicas", for_="scale-replicas"),
                el(
                    "input",
                    id="scale-replicas",
                    name="replicas",
                    type="number",
                    min="0",
                    max="1000",
                    required=True,
                    value=str(status.get("replicas", 0)),
                ),
                el("button", "Scale", type="submit"),
                method="post",
                action=f"{base}/scale",
                class_="inline",
            ),
            el(
                "form",
                _csrf(csrf),
                el("button", "Roll back to the previous release", type="submit"),
                method="post",
                action=f"{base}/rollback",
                class_="inline",
                data_confirm="Roll back to the previous release?",
            ),
            class_="actions",
        ),
        aria_labelledby="actions-title",
    )


def _releases(base: str, releases: Sequence[Json], csrf: str) -> Html:
    head = el(
        "thead",
        el(
            "tr",
            [
                el("th", name, scope="col")
                for name in ("Version", "State", "Reason", "Image", "Created", "")
            ],
        ),
    )
    rows = []
    for release in releases:
        version = release["version"]
        action: Html | str = "current" if release.get("current") else ""
        if not release.get("current"):
            action = el(
                "form",
                _csrf(csrf),
                el("input", type="hidden", name="version", value=str(version)),
                el(
                    "button",
                    "Roll back to ",
                    el("span", f"v{version}"),
                    type="submit",
                    class_="small",
                ),
                method="post",
                action=f"{base}/rollback",
                data_confirm=f"Roll back to v{version}?",
            )
        state = release.get("state", "")
        if release.get("error"):
            state = f"{state}: {release['error']}"
        rows.append(
            el(
                "tr",
                el("th", f"v{version}", scope="row"),
                el("td", state),
                el("td", release.get("reason", "")),
                el("td", release.get("image_ref") or _short(release.get("image_digest"))),
                el("td", timestamp(release.get("created_at"))),
                el("td", action),
                class_="current" if release.get("current") else None,
                data_version=str(version),
            )
        )
    content = (
        el("table", el("caption", "Newest first"), head, el("tbody", rows))
        if rows
        else el("p", "No releases yet.")
    )
    return el(
        "section",
        el("h2", "Releases", id="releases-title"),
        content,
        id="releases",
        aria_labelledby="releases-title",
    )


def _instances(instances: Sequence[Json], nodes: Mapping[str, Json]) -> Html:
    by_node: dict[str, list[Json]] = {}
    for instance in instances:
        if instance.get("state") == "terminated":
            continue
        by_node.setdefault(str(instance.get("node_id") or ""), []).append(instance)
    groups = []
    for node_id, group in sorted(by_node.items(), key=lambda kv: _node_name(nodes, kv[0])):
        head = el(
            "thead",
            el(
                "tr",
                [
                    el("th", name, scope="col")
                    for name in ("Instance", "Release", "State", "Health", "Last check")
                ],
            ),
        )
        rows = [
            el(
                "tr",
                el("th", el("code", _short(i["id"])), scope="row"),
                el("td", "" if i.get("version") is None else f"v{i['version']}"),
                el("td", _instance_state(i)),
                el("td", el("span", i.get("health", ""), class_=f"health {i.get('health', '')}")),
                el("td", check_text(i.get("last_check"))),
            )
            for i in group
        ]
        groups.append(
            el("table", el("caption", _node_name(nodes, node_id)), head, el("tbody", rows))
        )
    return el(
        "section",
        el("h2", "Instances", id="instances-title"),
        groups or el("p", "No instances."),
        id="instances",
        aria_labelledby="instances-title",
    )


def _instance_state(instance: Json) -> str:
    text = str(instance.get("state", ""))
    if instance.get("draining"):
        text += ", draining"
    elif instance.get("serving"):
        text += ", serving"
    if instance.get("exit_code") is not None:
        text += f" (exit {instance['exit_code']})"
    return text


def check_text(check: Json | None) -> str:
    if not check:
        return "none yet"
    text = ("ok" if check.get("ok") else "failed") + (
        f": {check['detail']}" if check.get("detail") else ""
    )
    at = check.get("checked_at")
    if isinstance(at, int | float):
        text += " at " + datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S")
    return text


def _node_name(nodes: Mapping[str, Json], node_id: str) -> str:
    if not node_id:
        return "Not placed"
    node = nodes.get(node_id)
    return f"Node {node['hostname']}" if node else f"Node {_short(node_id)}"


def _live_list(name: str, url: str, title_id: str) -> Html:
    return el(
        "div",
        el("p", "Connecting…", id=f"{name}-state", class_="help", aria_live="polite"),
        el("ol", id=name, class_="live", role="log", aria_labelledby=title_id, data_stream=url),
        el("noscript", "Live streams need JavaScript; ", el("a", "the JSON", href=url), "."),
    )


# -- nodes -----------------------------------------------------------------------------------


def nodes_page(nodes: Sequence[Json], *, csrf: str, notice_html: Html | None) -> list[Html | None]:
    head = el(
        "thead",
        el(
            "tr",
            [
                el("th", name, scope="col")
                for name in ("Node", "State", "Address", "Capacity", "Used", "Heartbeat", "")
            ],
        ),
    )
    rows = []
    for node in nodes:
        beat = node.get("heartbeat") or {}
        state = node.get("state", "")
        action: Html | str = ""
        if state in ("ready", "draining"):
            verb = "drain" if state == "ready" else "undrain"
            action = el(
                "form",
                _csrf(csrf),
                el(
                    "button",
                    "Drain" if verb == "drain" else "Undrain",
                    el("span", f" {node['hostname']}", class_="visually-hidden"),
                    type="submit",
                    class_="small",
                ),
                method="post",
                action=f"/nodes/{quote(str(node['id']), safe='')}/{verb}",
                data_confirm=f"{verb.capitalize()} {node['hostname']}?"
                if verb == "drain"
                else None,
            )
        rows.append(
            el(
                "tr",
                el("th", node["hostname"], scope="row"),
                el("td", state),
                el("td", node.get("ip_address", "")),
                el("td", capacity_text(node.get("resources"))),
                el("td", capacity_text(beat.get("used"))),
                el("td", timestamp(node.get("last_heartbeat_at"))),
                el("td", action),
            )
        )
    table = (
        el("table", el("caption", "Nodes"), head, el("tbody", rows))
        if rows
        else el("p", "No nodes yet.")
    )
    return [el("h1", "Nodes"), notice_html, table]


def capacity_text(resources: Json | None) -> str:
    if not resources:
        return "unknown"
    return f"{resources.get('vcpu', 0):g} vCPU, {resources.get('memory', 0)} MiB"


# -- small parts -----------------------------------------------------------------------------


def timestamp(value: str | None) -> Html | str:
    if not value:
        return "never"
    try:
        when = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    return el("time", when.strftime("%Y-%m-%d %H:%M:%S UTC"), datetime=when.isoformat())


def _short(value: object) -> str:
    text = str(value or "")
    return text.removeprefix("sha256:")[:8] if text else ""


def _csrf(token: str) -> Html:
    return el("input", type="hidden", name=CSRF_FIELD, value=token)


def error_page(message: str) -> list[Html | None]:
    return [el("h1", "Something is wrong"), el("p", message, role="alert", class_="flash error")]
