"""The services container handed to every router (built once by ``main.py``).

Add a field here for each new store or service, build it in ``main.build_deps`` and read
it from ``deps`` in your router; there are no module-level pools, stores or settings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from zeitwork.clients.agent import AgentClients
from zeitwork.clients.registry import RegistryClient, registry_http_client
from zeitwork.core.clock import Clock
from zeitwork.images import ArchiveStore
from zeitwork.images.manifests import ACCEPT as MANIFEST_ACCEPT
from zeitwork.images.manifests import MAX_MANIFEST_BYTES
from zeitwork.operator.auth import Authenticator
from zeitwork.operator.db.app_refs import AppRefs
from zeitwork.operator.db.builds import BuildStore
from zeitwork.operator.db.certificates import CertificateStore
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.events import EventStore
from zeitwork.operator.db.images import ImageStore, RegistryCredentialStore
from zeitwork.operator.db.instances import InstanceStore
from zeitwork.operator.db.listener import ChangeListener
from zeitwork.operator.db.nodes import NodeStore
from zeitwork.operator.db.projects import ProjectStore
from zeitwork.operator.db.proxy_stats import ProxyStatsStore
from zeitwork.operator.db.regions import RegionStore
from zeitwork.operator.db.releases import ReleaseStore
from zeitwork.operator.db.routes import RouteStore
from zeitwork.operator.db.stats import StatsStore
from zeitwork.operator.db.tokens import TokenStore
from zeitwork.operator.secret_box import SecretBox, load_secret_box
from zeitwork.operator.services.builds import BuildService
from zeitwork.operator.services.deployments import DeploymentService
from zeitwork.operator.services.domains import DnsTxt, DomainVerifier
from zeitwork.operator.services.events import EventFeed
from zeitwork.operator.services.images import ImageService, PlatformSettings
from zeitwork.operator.services.instances import InstanceService
from zeitwork.operator.services.logs import LogFanIn
from zeitwork.operator.services.nodes import NodeService
from zeitwork.operator.services.proxy_stats import ProxyStatsService
from zeitwork.operator.services.releases import ReleaseService
from zeitwork.operator.services.tokens import TokenService
from zeitwork.operator.services.watch import Watcher
from zeitwork.operator.settings import OperatorSettings, parse_dns_servers


@dataclass(frozen=True, kw_only=True)
class Deps:
    settings: OperatorSettings
    clock: Clock
    db: Database
    auth: Authenticator
    tokens: TokenStore
    token_service: TokenService
    nodes: NodeStore
    node_service: NodeService
    regions: RegionStore
    stats: StatsStore
    stopping: asyncio.Event
    """Set when the operator begins to drain: long-polls should answer at once."""
    instances: InstanceStore
    instance_service: InstanceService
    listener: ChangeListener
    """The process's one LISTEN connection (started lazily; ``main`` closes it)."""
    watcher: Watcher
    routes: RouteStore
    projects: ProjectStore
    deployment_service: DeploymentService
    certificates: CertificateStore
    images: ImageStore
    image_service: ImageService
    domain_verifier: DomainVerifier
    releases: ReleaseStore
    release_service: ReleaseService
    secret_box: SecretBox
    app_refs: AppRefs
    events: EventStore
    event_feed: EventFeed
    agent_clients: AgentClients
    """Pooled clients of the node agents (``main`` closes them)."""
    log_fan_in: LogFanIn
    proxy_stats: ProxyStatsService
    """Load balancers' pushed request totals and the apps' figures from them."""
    builds: BuildStore
    build_service: BuildService
    """The build queue: builds from source, their logs and contexts (``services.builds``)."""


def build_deps(
    *,
    settings: OperatorSettings,
    db: Database,
    clock: Clock,
    stopping: asyncio.Event,
    secret_box: SecretBox | None = None,
) -> Deps:
    """Wire stores and services onto one pool (the one place that news them up).

    Without ``secret_box`` the key is loaded here (a small file read; ``main`` loads it in
    a thread and passes it in)."""
    tokens = TokenStore(db=db)
    auth = Authenticator(
        tokens=tokens,
        clock=clock,
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        cache_seconds=settings.token_cache_seconds,
    )
    token_service = TokenService(db=db, tokens=tokens, auth=auth)
    nodes = NodeStore(db=db)
    instances = InstanceStore(db=db)
    listener = ChangeListener(conninfo=db.conninfo)
    instance_service = InstanceService(db=db, instances=instances)
    projects = ProjectStore(db=db)
    images = ImageStore(db=db)
    box = secret_box if secret_box is not None else load_secret_box(settings)[0]
    releases = ReleaseStore(db=db)
    app_refs = AppRefs(db=db)
    events = EventStore(db=db)
    agent_clients = AgentClients()
    watcher = Watcher(db=db, listener=listener, stopping=stopping)
    image_service = ImageService(
        images=images,
        archives=ArchiveStore(root=settings.data_dir / "images"),
        max_bytes=settings.image_max_bytes,
        registry=RegistryClient(
            http=registry_http_client(ca_bundle=settings.registry_ca_bundle),
            accept=MANIFEST_ACCEPT,
            max_manifest_bytes=MAX_MANIFEST_BYTES,
            insecure=settings.insecure_registries.split(","),
        ),
        publish=PlatformSettings.of(settings),
        credentials=RegistryCredentialStore(db=db),
        secret_box=box,
    )
    release_service = ReleaseService(
        db=db,
        releases=releases,
        projects=projects,
        images=images,
        instances=instances,
        box=box,
        resolve_image=image_service.resolve_reference,
    )
    builds = BuildStore(db=db)
    build_service = BuildService(
        db=db,
        store=builds,
        projects=projects,
        releases=releases,
        release_service=release_service,
        box=box,
        watcher=watcher,
        stopping=stopping,
        contexts_dir=settings.data_dir / "build-contexts",
        context_max_bytes=settings.build_context_max_bytes,
        lease_seconds=settings.build_lease_seconds,
    )
    return Deps(
        settings=settings,
        clock=clock,
        db=db,
        auth=auth,
        tokens=tokens,
        token_service=token_service,
        nodes=nodes,
        node_service=NodeService(
            db=db,
            nodes=nodes,
            tokens=tokens,
            token_service=token_service,
            auth=auth,
            subnet_pool=settings.subnet_pool,
            heartbeat_timeout=settings.node_heartbeat_timeout,
        ),
        regions=RegionStore(db=db),
        stats=StatsStore(db=db),
        stopping=stopping,
        instances=instances,
        instance_service=instance_service,
        listener=listener,
        watcher=watcher,
        routes=RouteStore(db=db),
        projects=projects,
        deployment_service=DeploymentService(
            db=db, projects=projects, instance_service=instance_service
        ),
        certificates=CertificateStore(db=db),
        images=images,
        image_service=image_service,
        domain_verifier=DomainVerifier(
            projects=projects, dns=DnsTxt(servers=tuple(parse_dns_servers(settings.dns_servers)))
        ),
        releases=releases,
        release_service=release_service,
        secret_box=box,
        app_refs=app_refs,
        events=events,
        event_feed=EventFeed(store=events, refs=app_refs, watcher=watcher, stopping=stopping),
        agent_clients=agent_clients,
        log_fan_in=LogFanIn(refs=app_refs, nodes=nodes, clients=agent_clients, clock=clock),
        proxy_stats=ProxyStatsService(store=ProxyStatsStore(db=db)),
        builds=builds,
        build_service=build_service,
    )
