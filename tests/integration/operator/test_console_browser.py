"""The web console in a real browser (Debian's chromium driven by Playwright) against a real
operator on a real socket and PostgreSQL, the app's releases seeded through the API with
fake agents reporting health and the reconcile loop driven by the test: sign in, open the
app, see its live log stream and live events arrive, roll back, see the release list change
(first from the form's answer, then in place as the rollout's events arrive)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.integration.operator.conftest import Operator
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import Platform, bind, platform

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
    ),
]


AGENT_TOKEN = "b" * 43


class AgentLogs:
    """The log half of a node agent's API (``GET /instances/{id}`` and its ``/logs``, tail
    and follow) on a real socket, serving lines the test writes with ``say``."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}
        self.followers: dict[str, list[asyncio.Queue[str]]] = {}
        self.app = Starlette(
            routes=[
                Route("/instances/{iid}", self._instance),
                Route("/instances/{iid}/logs", self._logs),
            ]
        )

    def say(self, instance_id: str, line: str) -> None:
        self.lines.setdefault(instance_id, []).append(line)
        for queue in self.followers.get(instance_id, []):
            queue.put_nowait(line)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {AGENT_TOKEN}"

    async def _instance(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        iid = request.path_params["iid"]
        return JSONResponse({"id": iid, "state": "running", "workload": "run-1"})

    async def _logs(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        iid = request.path_params["iid"]
        tail = int(request.query_params.get("tail", "100"))
        history = self.lines.get(iid, [])[-tail:] if tail else []
        if request.query_params.get("follow") != "true":
            return Response("".join(f"{line}\n" for line in history))
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.followers.setdefault(iid, []).append(queue)

        async def stream() -> AsyncIterator[bytes]:
            try:
                for line in history:
                    yield f"{line}\n".encode()
                while True:
                    yield f"{await queue.get()}\n".encode()
            finally:
                self.followers[iid].remove(queue)

        return StreamingResponse(stream(), media_type="text/plain")


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app, lifespan="off", access_log=False, log_config=None, timeout_graceful_shutdown=1
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "the fake agent did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _current(p: Platform, version: int) -> bool:
    status = await p.status()
    current = status["current_release"]
    return bool(current and current["version"] == version and status["rollout"] is None)


async def _seed(op: Operator) -> Platform:
    p = await platform(op)
    await bind(p, "shop.example.com")
    await p.deploy(replicas=2, description="first")
    await p.converge(lambda: _current(p, 1))
    await p.deploy(replicas=2, description="second")
    await p.converge(lambda: _current(p, 2))
    return p


async def test_sign_in_open_an_app_follow_it_and_roll_back(
    operator: Operator, browser: Browser, tmp_path: Path
) -> None:
    p = await _seed(operator)
    name = p.project["name"]
    # the fixture's clock starts in January; the wall clock's time makes the page's log
    # times real (the docs' screenshot is this test's)
    operator.clock.advance((datetime.now(UTC) - operator.clock.now()).total_seconds())
    agent = AgentLogs()
    serving = [i["id"] for i in (await p.status())["instances"] if i["serving"]]
    for number, iid in enumerate(serving):
        agent.say(iid, f"listening on :8080 (instance {number})")
    async with serve(agent.app) as agent_url, live_operator(operator) as url:
        for fake in p.agents:  # both nodes' agents are this one log server
            await operator.sql(
                "UPDATE nodes SET agent_url = %s, agent_token = %s WHERE id = %s",
                (agent_url, AGENT_TOKEN, fake.node_id),
            )
        page: Page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        errors: list[str] = []  # script errors and CSP refusals end up here
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
        try:
            await page.goto(url + "/")
            await expect(page).to_have_url(url + "/sign-in")
            await page.get_by_label("API token").fill("zw_wrong-token-000000000000000000000000000")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("alert")).to_contain_text("unknown, expired or revoked")
            await page.get_by_label("API token").fill(operator.admin_token)
            await page.get_by_role("button", name="Sign in").click()

            await expect(page.get_by_role("heading", level=1)).to_have_text("Apps")
            row = page.get_by_role("row").filter(has_text=name)
            await expect(row).to_contain_text("v2")
            await expect(row).to_contain_text("2/2 healthy")
            await page.screenshot(path=str(tmp_path / "console-apps.png"))
            await row.get_by_role("link", name=name).click()

            await expect(page.get_by_role("heading", level=1)).to_have_text(name)
            releases = page.locator("#releases tbody tr")
            await expect(releases).to_have_count(2)
            await expect(page.locator("#releases tr.current")).to_have_attribute(
                "data-version", "2"
            )
            instances = page.locator("#instances tbody tr")
            await expect(instances).to_have_count(2)
            await expect(instances.first).to_contain_text("tcp :8080 open")
            # both streams are authenticated by the session cookie and live
            await expect(page.locator("#events-state")).to_have_text("Live.")
            await expect(page.locator("#events")).to_contain_text("rollout.succeeded")
            logs = page.locator("#logs")
            await expect(page.locator("#logs-state")).to_have_text("Live.")
            await expect(logs).to_contain_text("listening on :8080 (instance 0)")
            await expect(logs).to_contain_text("listening on :8080 (instance 1)")
            agent.say(serving[0], "GET /checkout 200 12ms")  # written while the page is open
            await expect(logs.locator("li").last).to_contain_text(
                re.compile(r"v2 \S{8}  GET /checkout 200 12ms$")
            )

            await page.get_by_role("button", name="Roll back to v1").click()
            await expect(page.get_by_role("status")).to_contain_text("Rollback started")
            await expect(page.locator("#releases tbody tr")).to_have_count(3)
            newest = page.locator("#releases tbody tr").first
            await expect(newest).to_have_attribute("data-version", "3")
            await expect(newest).to_contain_text("rollback")
            await expect(page.locator("#releases tr.current")).to_have_attribute(
                "data-version", "2"
            )
            await expect(page.locator("#events-state")).to_have_text("Live.")
            seen = await page.locator("#events li").count()

            # the rollout runs while the page is open: its events arrive live and the page
            # refreshes its releases in place (no navigation)
            await p.converge(lambda: _current(p, 3))
            await expect(page.locator("#events li").nth(seen)).to_be_attached()
            await expect(page.locator("#events")).to_contain_text(re.compile(r"rollout\.\S+"))
            await expect(page.locator("#releases tr.current")).to_have_attribute(
                "data-version", "3", timeout=10_000
            )
            await expect(page).to_have_url(re.compile(r"/apps/[^/]+\?done=rollback$"))
            await page.screenshot(path=str(tmp_path / "console-app.png"), full_page=True)

            await page.get_by_role("link", name="Nodes").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Nodes")
            await expect(page.get_by_role("button", name=re.compile("^Drain"))).to_have_count(2)
            await page.get_by_role("button", name=re.compile("^Drain")).first.click()
            await expect(page.get_by_role("status")).to_contain_text("Node draining")
            await expect(page.get_by_role("button", name=re.compile("^Undrain"))).to_have_count(1)

            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(url + "/sign-in")
            cookies = await page.context.cookies()
            assert not [c for c in cookies if c["name"] == "zw_console"]
            await page.goto(url + "/nodes")
            await expect(page).to_have_url(url + "/sign-in")
            # the wrong token's 401 page is the one error the browser reports
            assert [e for e in errors if "401" not in e] == [], errors
        finally:
            await page.close()  # its streams end before the server stops
