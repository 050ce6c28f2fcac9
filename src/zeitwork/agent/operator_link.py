"""Everything the agent says to and hears from the operator: registration (once, with the
join token; the node credential is kept in the data dir, mode 0600), heartbeats, the
assignment long-poll with a periodic full resync, and instance state reports.

When the operator cannot be reached the agent leaves its instances alone and retries with
exponential back-off; reports queue up (in order, per instance, bounded) until it is back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ZeitworkError,
)
from zeitwork.core.files import atomic_write_json
from zeitwork.core.resources import Resources
from zeitwork.observability import get_logger
from zeitwork.serving.poll import VersionedPoll
from zeitwork.wire.agent import (
    Assignments,
    Heartbeat,
    InstanceStatus,
    InstanceStatusReport,
    NodeRegistration,
    RuntimeName,
)
from zeitwork.wire.common import CapacityModel, ResourcesModel

log = get_logger(__name__)
MAX_QUEUED_PER_INSTANCE = 20


@dataclass(frozen=True, slots=True)
class Credential:
    node_id: uuid.UUID
    node_token: str | None


class CredentialFile:
    """``node.json`` in the data dir: the node id (generated once) and its credential."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Credential | None:
        try:
            value = json.loads(self.path.read_text())
            return Credential(uuid.UUID(value["node_id"]), value.get("node_token"))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{self.path} is unreadable: {exc}") from exc

    def save(self, credential: Credential) -> None:
        atomic_write_json(
            self.path,
            {"node_id": str(credential.node_id), "node_token": credential.node_token},
            mode=0o600,
        )


def next_delay(current: float, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential back-off for operator retries (pure)."""
    return base if current <= 0 else min(cap, current * 2)


def agent_url_for(ip_address: str, port: int) -> str:
    """The agent API's URL at the node's address (``ZEITWORK_AGENT_ADVERTISE_URL`` unset)."""
    host = f"[{ip_address}]" if ipaddress.ip_address(ip_address).version == 6 else ip_address
    return f"http://{host}:{port}"


def _capacity(resources: Resources) -> CapacityModel:
    return CapacityModel(
        vcpu=resources.vcpu, memory=resources.memory_mib, disk=max(0, resources.disk_mib)
    )


class OperatorLink:
    def __init__(
        self,
        *,
        client: OperatorClient,
        credentials: CredentialFile,
        join_token: str | None,
        node_id: uuid.UUID | None,
        hostname: str,
        ip_address: str,
        region_id: uuid.UUID | None,
        runtime: RuntimeName,
        capacity: Resources,
        used: Callable[[], Resources],
        statuses: Callable[[], list[InstanceStatus]],
        on_assignments: Callable[[Assignments], None],
        heartbeat_interval: float = 10.0,
        resync_interval: float = 60.0,
        assignment_wait: int = 30,
        retry_base: float = 1.0,
        subnet: str | None = None,
        agent_url: str | None = None,
        agent_token: str | None = None,
    ) -> None:
        self.client = client
        self.agent_url = agent_url
        self.agent_token = agent_token
        self.credentials = credentials
        self.join_token = join_token
        self.configured_node_id = node_id
        self.hostname = hostname
        self.ip_address = ip_address
        self.region_id = region_id
        self.runtime: RuntimeName = runtime
        self.capacity = capacity
        self.used = used
        self.statuses = statuses
        self.on_assignments = on_assignments
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self.assignment_wait = assignment_wait
        self.retry_base = retry_base
        self.subnet = subnet
        """The node's instance subnet: declared at registration when known (the explicit
        setting or the one the operator gave before), else the one the operator answers."""
        self.node_id: uuid.UUID | None = None
        self.node_token: str | None = None
        self.last_heartbeat_ok: bool | None = None
        self.last_error: str | None = None
        self._reports: dict[uuid.UUID, deque[InstanceStatusReport]] = {}
        self._report_ready = asyncio.Event()
        self._registered = asyncio.Event()
        self._assignments = VersionedPoll(
            fetch=self._fetch_assignments,
            apply=self._take_assignments,
            log=log,
            failed_event="operator.assignments_failed",
            wait=assignment_wait,
            full_refresh=resync_interval,
            retry_base=retry_base,
            on_error=self._assignments_failed,
        )

    # -- registration --------------------------------------------------------------------
    def _registration(self, node_id: uuid.UUID) -> NodeRegistration:
        return NodeRegistration(
            id=node_id,
            hostname=self.hostname,
            ip_address=self.ip_address,
            region_id=self.region_id,
            runtime=self.runtime,
            resources=ResourcesModel(
                vcpu=max(0.001, self.capacity.vcpu), memory=max(1, self.capacity.memory_mib)
            ),
            disk=self.capacity.disk_mib,
            subnet=self.subnet,
            agent_url=self.agent_url,
            agent_token=self.agent_token,
        )

    async def register(self) -> None:
        """Register (idempotent on the node id); keep the credential. Retries until done."""
        delay = 0.0
        while True:
            try:
                await self._register_once()
                self._registered.set()
                return
            except ServiceUnavailable as exc:
                delay = next_delay(delay, base=self.retry_base)
                self.last_error = exc.detail
                log.warning("operator.register_retry", error=exc.detail, retry_in=delay)
                await asyncio.sleep(delay)
            except ZeitworkError as exc:
                # refused (bad or missing join token, invalid registration): keep running
                # the instances we have, say so loudly, try again slowly
                delay = next_delay(max(delay, 15.0))
                self.last_error = exc.detail
                log.error("operator.register_refused", error=exc.detail, retry_in=delay)
                await asyncio.sleep(delay)

    async def _register_once(self) -> None:
        stored = self.credentials.load()
        node_id = self.configured_node_id or (stored.node_id if stored else None) or uuid.uuid4()
        if stored is None or stored.node_id != node_id:
            self.credentials.save(Credential(node_id, None))
            stored = Credential(node_id, None)
        token = stored.node_token
        if token is not None:
            self.client.use_token(token)
            try:
                answer = await self.client.register(self._registration(node_id))
            except (AuthenticationRequired, PermissionDenied):
                token = None  # revoked: fall back to the join token
            else:
                self._adopt(answer.node_id, token, answer.subnet)
                return
        if not self.join_token:
            raise AuthenticationRequired(
                "no node credential in the data dir and no ZEITWORK_JOIN_TOKEN to register with"
            )
        answer = await self.client.register(self._registration(node_id), join_token=self.join_token)
        if not answer.node_token:
            raise AuthenticationRequired("the operator did not issue a node credential")
        self._adopt(answer.node_id, answer.node_token, answer.subnet)

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def _adopt(self, node_id: uuid.UUID, token: str, subnet: str | None) -> None:
        if self.subnet is not None and subnet is not None and subnet != self.subnet:
            # the operator refuses a mismatch (409); an operator that answers with another
            # subnet anyway is not followed: the node network already runs on ours
            raise Conflict(
                f"the operator recorded the subnet {subnet} for this node, but it uses "
                f"{self.subnet}"
            )
        if self.subnet is None:
            self.subnet = subnet
        self.node_id = node_id
        self.node_token = token
        self.client.use_token(token)
        self.credentials.save(Credential(node_id, token))
        log.info("operator.registered", node_id=str(node_id))

    # -- loops ---------------------------------------------------------------------------
    def heartbeat_body(self) -> Heartbeat:
        used = self.used()
        available = Resources(
            max(0, self.capacity.millicpu - used.millicpu),
            max(0, self.capacity.memory_mib - used.memory_mib),
            max(0, self.capacity.disk_mib - used.disk_mib),
        )
        return Heartbeat(
            capacity=_capacity(self.capacity),
            used=_capacity(used),
            available=_capacity(available),
            instances=self.statuses(),
            runtime=self.runtime,
        )

    async def heartbeat_loop(self) -> None:
        await self._registered.wait()
        delay = 0.0
        while True:
            assert self.node_id is not None
            try:
                await self.client.heartbeat(self.node_id, self.heartbeat_body())
                self.last_heartbeat_ok = True
                delay = 0.0
                wait = self.heartbeat_interval
            except (AuthenticationRequired, PermissionDenied):
                self.last_heartbeat_ok = False
                log.warning("operator.credential_rejected")
                await self._register_once_quietly()
                delay = next_delay(delay, base=self.retry_base)
                wait = delay
            except ZeitworkError as exc:
                self.last_heartbeat_ok = False
                self.last_error = exc.detail
                delay = next_delay(delay, base=self.retry_base)
                wait = min(delay, self.heartbeat_interval)
                log.warning("operator.heartbeat_failed", error=exc.detail, retry_in=wait)
            await asyncio.sleep(wait)

    async def _register_once_quietly(self) -> None:
        try:
            await self._register_once()
        except ZeitworkError as exc:
            self.last_error = exc.detail
            log.warning("operator.register_failed", error=exc.detail)

    @property
    def version(self) -> int | None:
        """The version of the assignments last handed over (None before the first)."""
        return self._assignments.version

    async def assignments_loop(self) -> None:
        """Long-poll; every ``resync_interval`` ask for the full state regardless."""
        await self._registered.wait()
        await self._assignments.run()

    async def _fetch_assignments(self, version: int | None, wait: float) -> Assignments:
        assert self.node_id is not None
        return await self.client.wait_assignments(self.node_id, version=version, wait=wait)

    def _take_assignments(self, answer: Assignments, full: bool) -> None:
        log.info(
            "operator.assignments",
            version=answer.version,
            instances=len(answer.instances),
            full=full,
        )
        self.on_assignments(answer)

    def _assignments_failed(self, exc: Exception) -> None:
        self.last_error = exc.detail if isinstance(exc, ZeitworkError) else str(exc)

    # -- reports -------------------------------------------------------------------------
    def report(self, instance_id: uuid.UUID, report: InstanceStatusReport) -> None:
        """Queue a state report (sent in order, retried until the operator takes it)."""
        queue = self._reports.setdefault(instance_id, deque(maxlen=MAX_QUEUED_PER_INSTANCE))
        queue.append(report)
        self._report_ready.set()

    def pending_reports(self) -> int:
        return sum(len(q) for q in self._reports.values())

    async def reports_loop(self) -> None:
        await self._registered.wait()
        delay = 0.0
        while True:
            await self._report_ready.wait()
            self._report_ready.clear()
            failed = False
            for instance_id in list(self._reports):
                queue = self._reports[instance_id]
                while queue:
                    report = queue[0]
                    try:
                        await self.client.report_state(instance_id, report)
                    except (Conflict, NotFound, InvalidInput) as exc:
                        # the operator refuses this one (illegal transition, unknown
                        # instance): drop it, the heartbeat carries the truth anyway
                        log.info(
                            "operator.report_refused",
                            instance_id=str(instance_id),
                            state=report.state.value,
                            error=exc.detail,
                        )
                    except ZeitworkError as exc:
                        self.last_error = exc.detail
                        failed = True
                        break
                    queue.popleft()
                if not queue:
                    self._reports.pop(instance_id, None)
                if failed:
                    break
            if failed:
                delay = next_delay(delay, base=self.retry_base)
                log.warning("operator.report_retry", retry_in=delay, queued=self.pending_reports())
                await asyncio.sleep(delay)
                self._report_ready.set()
            else:
                delay = 0.0
