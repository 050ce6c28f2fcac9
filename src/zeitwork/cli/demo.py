"""``zeitwork dev --demo`` (and ``zeitwork demo`` against a running platform): build the
busybox demo image, import it, deploy it behind ``demo.localhost`` and wait until the edge
serves it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zeitwork.cli.demo_image import DEMO_PORT, DemoImageError, write_demo_archive
from zeitwork.clients.admin import AdminClient, probe
from zeitwork.core.states import InstanceState
from zeitwork.wire.admin import DeploymentOut, ImageOut

DEMO_DOMAIN = "demo.localhost"
DEMO_PROJECT = "demo"


class DemoFailed(Exception):
    """The demo did not come up; ``str(exc)`` says what happened."""


@dataclass(frozen=True, slots=True)
class DemoResult:
    image: ImageOut
    deployment: DeploymentOut
    instance_address: str


async def run_demo(
    client: AdminClient,
    *,
    work_dir: Path,
    edge_url: str,
    say: Callable[[str], None],
    within: float = 120.0,
) -> DemoResult:
    say("demo: building the demo image from the host's static busybox")
    try:
        archive = await asyncio.to_thread(write_demo_archive, work_dir / "demo-image.tar")
    except (DemoImageError, OSError) as exc:
        raise DemoFailed(f"cannot build the demo image: {exc}") from exc
    image = await client.import_image(archive, name="zeitwork-demo")
    say(f"demo: image {image.id} ({image.digest})")

    projects = {p.slug: p for p in await client.projects()}
    project = projects.get(DEMO_PROJECT) or await client.create_project(DEMO_PROJECT)
    existing = {d.name: d for d in await client.domains()}.get(DEMO_DOMAIN)
    old_deployment = existing.deployment_id if existing else None

    deployment = await client.create_deployment(
        project_id=project.id, image_id=image.id, port=DEMO_PORT, replicas=1, memory=64
    )
    say(f"demo: deployment {deployment.id}, waiting for its instance")
    if existing is None:
        await client.create_domain(DEMO_DOMAIN, project_id=project.id, deployment_id=deployment.id)
    address = await _wait_running(client, deployment, within=within)
    if existing is not None:
        await client.bind_domain(existing.id, deployment.id)
    if old_deployment is not None and old_deployment != deployment.id:
        for old in await client.instances(deployment_id=old_deployment):
            if old.desired_state != "terminated":
                await client.terminate_instance(old.id)
    say(f"demo: instance running at {address}; waiting for the edge to route {DEMO_DOMAIN}")
    await _wait_served(edge_url, within=within)
    return DemoResult(image=image, deployment=deployment, instance_address=address)


async def _wait_running(client: AdminClient, deployment: DeploymentOut, *, within: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        instances = await client.instances(deployment_id=deployment.id)
        for instance in instances:
            if instance.state is InstanceState.RUNNING and instance.ip_address:
                return f"{instance.ip_address}:{instance.port or DEMO_PORT}"
            if instance.state is InstanceState.FAILED:
                raise DemoFailed(f"the demo instance failed: {instance.reason or 'no reason'}")
        if loop.time() > deadline:
            states = ", ".join(i.state for i in instances) or "no instance"
            raise DemoFailed(f"the demo instance is not running after {within:.0f} s ({states})")
        await asyncio.sleep(0.25)  # polling the API: the probe is the loop condition


async def _wait_served(edge_url: str, *, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    status: int | None = None
    while loop.time() < deadline:
        status = await probe(edge_url + "/", host=DEMO_DOMAIN)
        if status == 200:
            return
        await asyncio.sleep(0.25)
    raise DemoFailed(f"{edge_url} with Host {DEMO_DOMAIN} answers {status or 'nothing'}")


def demo_commands(*, edge_http: str, https_port: int, ca_file: Path) -> str:
    return "\n".join(
        [
            "",
            f"The demo app is live at http://{DEMO_DOMAIN} through the edge:",
            f"  curl -H 'Host: {DEMO_DOMAIN}' {edge_http}/",
            f"  curl --cacert {ca_file} --resolve {DEMO_DOMAIN}:{https_port}:127.0.0.1 "
            f"https://{DEMO_DOMAIN}:{https_port}/",
            "",
        ]
    )
