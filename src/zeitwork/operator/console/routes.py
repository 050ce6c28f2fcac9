"""The web console's routes: sign in and out, apps, one app, nodes, and the static assets.

Pages are GETs that read through the API in-process with the session's token; forms are
POSTs that check the session's CSRF token and ``Origin`` and then call the same API routes
the CLI calls, then redirect (303) back to the page, or show the API's refusal on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from zeitwork.core.errors import AuthenticationRequired, PermissionDenied
from zeitwork.operator.auth import check_scope
from zeitwork.operator.console import pages
from zeitwork.operator.console.forms import whole_number
from zeitwork.operator.console.inprocess import ApiAnswer, InProcessApi
from zeitwork.operator.console.session import (
    COOKIE_NAME,
    CSRF_FIELD,
    Session,
    cookie_options,
    csrf_token,
    csrf_valid,
    decode,
    encode,
    new_session,
    origin_allowed,
    parse_form,
)
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope

log = structlog.get_logger("zeitwork.operator.console")

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",  # not no-referrer: forms would send Origin: null
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_ASSET_TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}
_MAX_APPS = 100

Slug = Annotated[str, Path(min_length=1, max_length=200)]
Done = Annotated[str | None, Query(max_length=20)]


class _Asset:
    def __init__(self, name: str) -> None:
        self.body = resources.files(__package__).joinpath("static", name).read_bytes()
        self.version = hashlib.sha256(self.body).hexdigest()[:12]
        self.media_type = _ASSET_TYPES[name.rsplit(".", 1)[1]]


def router(*, deps: Deps, api: InProcessApi) -> APIRouter:
    console = APIRouter(include_in_schema=False)
    assets = {"css": _Asset("console.css"), "js": _Asset("console.js")}
    urls = {kind: f"/console/static/{kind}/{a.version}" for kind, a in assets.items()}

    def html(
        title: str, body: Iterable[object], *, session: Session | None, nav: str, status: int = 200
    ) -> HTMLResponse:
        page = pages.layout(
            title=title,
            body=body,
            assets=urls,
            csrf=None if session is None else csrf_token(session),
            nav=nav,
        )
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)

    def to_sign_in(request: Request) -> Response:
        """A redirect to the sign-in page, forgetting the session cookie if there is one."""
        answer = RedirectResponse("/sign-in", status_code=303, headers=SECURITY_HEADERS)
        if COOKIE_NAME in request.cookies:
            options = cookie_options(secure=_https(request))
            answer.delete_cookie(options.pop("key"), **options)
        return answer

    def refused(request: Request, answer: ApiAnswer, session: Session) -> Response | None:
        """The response for an answer that is no page's data: signed out, or a problem."""
        if answer.status == 401:
            return to_sign_in(request)
        if not answer.ok:
            body = pages.error_page(answer.problem())
            return html("Error", body, session=session, nav="", status=answer.status)
        return None

    @console.get("/console/static/{kind}/{version}")
    async def static(kind: str, version: str) -> Response:
        asset = assets.get(kind)
        if asset is None or version != asset.version:
            return Response(status_code=404)
        return Response(
            asset.body,
            media_type=asset.media_type,
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @console.get("/favicon.ico")
    async def favicon() -> Response:
        """No icon (browsers ask for one on every first visit): an empty answer, cached."""
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})

    @console.get("/sign-in")
    async def sign_in_page(request: Request) -> Response:
        if decode(request.cookies.get(COOKIE_NAME)) is not None:
            return RedirectResponse("/", status_code=303)
        return html("Sign in", pages.sign_in(error=None), session=None, nav="")

    async def session_for(token: str) -> Session | str:
        """A new session for an admin token, or why not (a sentence for the page)."""
        if not token:
            return "Enter an API token."
        try:
            principal = await deps.auth.authenticate(f"Bearer {token}")
            check_scope(principal, {Scope.ADMIN})
            return new_session(token)
        except PermissionDenied:
            return "That token may not use the console: it needs scope admin."
        except (AuthenticationRequired, ValueError):
            return "That token is unknown, expired or revoked."

    @console.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        if not _same_origin(request):
            return html(
                "Sign in",
                pages.sign_in(error="Refused: wrong origin."),
                session=None,
                nav="",
                status=403,
            )
        form = await _form(request)
        session = await session_for((form or {}).get("token", "").strip())
        if isinstance(session, str):
            log.info("console.sign_in_refused")
            return html("Sign in", pages.sign_in(error=session), session=None, nav="", status=401)
        log.info("console.signed_in")
        answer = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        answer.set_cookie(value=encode(session), **cookie_options(secure=_https(request)))
        return answer

    @console.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        checked = await _checked_post(request)
        if isinstance(checked, Response):
            return checked
        log.info("console.signed_out")
        return to_sign_in(request)

    @console.get("/")
    async def apps_page(request: Request, done: Done = None) -> Response:
        session = decode(request.cookies.get(COOKIE_NAME))
        if session is None:
            return to_sign_in(request)
        listed = await api.call(
            "GET", "/api/v1/projects", token=session.token, query={"limit": str(_MAX_APPS)}
        )
        if (stop := refused(request, listed, session)) is not None:
            return stop
        rows: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for project in listed.json():
            status = await api.call(
                "GET", _app_path(project["slug"], "status"), token=session.token
            )
            if status.status == 404:  # no production environment yet: not deployed
                rows.append((project, None))
                continue
            if (stop := refused(request, status, session)) is not None:
                return stop
            rows.append((project, status.json()))
        body = pages.apps(rows, notice_html=pages.notice(done=done))
        return html("Apps", body, session=session, nav="apps")

    async def app_view(
        request: Request,
        session: Session,
        slug: str,
        *,
        error: str | None = None,
        done: str | None = None,
        status_code: int = 200,
    ) -> Response:
        status = await api.call("GET", _app_path(slug, "status"), token=session.token)
        if (stop := refused(request, status, session)) is not None:
            return stop
        releases = await api.call(
            "GET", _app_path(slug, "releases"), token=session.token, query={"limit": "20"}
        )
        if (stop := refused(request, releases, session)) is not None:
            return stop
        nodes = await api.call("GET", "/api/v1/nodes", token=session.token, query={"limit": "1000"})
        if (stop := refused(request, nodes, session)) is not None:
            return stop
        app_status = status.json()
        body = pages.app(
            status=app_status,
            releases=releases.json(),
            nodes={str(n["id"]): n for n in nodes.json()},
            csrf=csrf_token(session),
            notice_html=pages.notice(error=error, done=done),
        )
        return html(app_status["name"], body, session=session, nav="apps", status=status_code)

    @console.get("/apps/{slug}")
    async def app_page(request: Request, slug: Slug, done: Done = None) -> Response:
        session = decode(request.cookies.get(COOKIE_NAME))
        if session is None:
            return to_sign_in(request)
        return await app_view(request, session, slug, done=done)

    async def app_action(
        request: Request, slug: str, verb: str, method: str, body: dict[str, Any]
    ) -> Response:
        checked = await _checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _form_fields = checked
        answer = await api.call(method, _app_path(slug, verb), token=session.token, body=body)
        if answer.status == 401:
            return to_sign_in(request)
        if not answer.ok:
            return await app_view(
                request, session, slug, error=answer.problem(), status_code=answer.status
            )
        log.info("console.app_action", action=verb, app=slug)
        done = {"releases": "deploy"}.get(verb, verb)
        return RedirectResponse(
            f"/apps/{quote(slug, safe='')}?done={done}", status_code=303, headers=SECURITY_HEADERS
        )

    @console.post("/apps/{slug}/rollback")
    async def rollback(request: Request, slug: Slug) -> Response:
        form = await _form(request) or {}
        text = form.get("version", "").strip()
        version = whole_number(text, max_digits=9)
        if text and not version:
            return await _bad_form(request, slug, "The version must be a number like 3.")
        body: dict[str, Any] = {"version": version} if version else {}
        return await app_action(request, slug, "rollback", "POST", body)

    @console.post("/apps/{slug}/scale")
    async def scale(request: Request, slug: Slug) -> Response:
        form = await _form(request) or {}
        replicas = whole_number(form.get("replicas", ""), max_digits=4)
        if replicas is None:
            return await _bad_form(request, slug, "Replicas must be a whole number, 0 to 1000.")
        return await app_action(request, slug, "scale", "PUT", {"replicas": replicas})

    @console.post("/apps/{slug}/deploy")
    async def deploy(request: Request, slug: Slug) -> Response:
        form = await _form(request) or {}
        image = form.get("image", "").strip()
        if not image or len(image) > 1000:
            return await _bad_form(request, slug, "Enter an image to deploy.")
        return await app_action(request, slug, "releases", "POST", {"image": image})

    async def _bad_form(request: Request, slug: str, message: str) -> Response:
        checked = await _checked_post(request)
        if isinstance(checked, Response):
            return checked
        return await app_view(request, checked[0], slug, error=message, status_code=422)

    async def nodes_view(
        request: Request,
        session: Session,
        *,
        error: str | None = None,
        done: str | None = None,
        status_code: int = 200,
    ) -> Response:
        nodes = await api.call("GET", "/api/v1/nodes", token=session.token, query={"limit": "1000"})
        if (stop := refused(request, nodes, session)) is not None:
            return stop
        body = pages.nodes_page(
            nodes.json(), csrf=csrf_token(session), notice_html=pages.notice(error=error, done=done)
        )
        return html("Nodes", body, session=session, nav="nodes", status=status_code)

    @console.get("/nodes")
    async def nodes_page(request: Request, done: Done = None) -> Response:
        session = decode(request.cookies.get(COOKIE_NAME))
        if session is None:
            return to_sign_in(request)
        return await nodes_view(request, session, done=done)

    async def node_action(request: Request, node_id: str, verb: str) -> Response:
        checked = await _checked_post(request)
        if isinstance(checked, Response):
            return checked
        session = checked[0]
        path = f"/api/v1/nodes/{quote(node_id, safe='')}/{verb}"
        answer = await api.call("POST", path, token=session.token)
        if answer.status == 401:
            return to_sign_in(request)
        if not answer.ok:
            return await nodes_view(
                request, session, error=answer.problem(), status_code=answer.status
            )
        log.info("console.node_action", action=verb, node_id=node_id)
        return RedirectResponse(f"/nodes?done={verb}", status_code=303, headers=SECURITY_HEADERS)

    @console.post("/nodes/{node_id}/drain")
    async def drain(request: Request, node_id: Slug) -> Response:
        return await node_action(request, node_id, "drain")

    @console.post("/nodes/{node_id}/undrain")
    async def undrain(request: Request, node_id: Slug) -> Response:
        return await node_action(request, node_id, "undrain")

    async def _checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
        """The session of a state-changing POST with a valid CSRF token from this origin,
        or the response refusing it."""
        session = decode(request.cookies.get(COOKIE_NAME))
        if session is None:
            return to_sign_in(request)
        form = await _form(request)
        if form is None:
            body = pages.error_page("The form could not be read.")
            return html("Error", body, session=session, nav="", status=400)
        if not _same_origin(request) or not csrf_valid(session, form.get(CSRF_FIELD)):
            log.warning("console.csrf_refused", path=request.url.path)
            body = pages.error_page(
                "Refused: the form is stale or from elsewhere. Reload the page."
            )
            return html("Refused", body, session=session, nav="", status=403)
        return session, form

    return console


async def _form(request: Request) -> dict[str, str] | None:
    """The request's urlencoded form (cached on the request: read once), None if unreadable."""
    cached = request.scope.get("zeitwork.console.form")
    if cached is not None:
        return dict(cached)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    try:
        form = parse_form(await request.body())
    except ValueError:
        return None
    request.scope["zeitwork.console.form"] = form
    return dict(form)


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _same_origin(request: Request) -> bool:
    return origin_allowed(
        request.headers.get("origin"), scheme=request.url.scheme, host=request.headers.get("host")
    )


def _app_path(slug: str, verb: str) -> str:
    return f"/api/v1/projects/{quote(slug, safe='')}/{verb}"
