"""Node use cases: registration with a node credential, deletion, state changes."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import structlog

from zeitwork.core.errors import Conflict
from zeitwork.core.states import NodeState
from zeitwork.operator.auth import Authenticator
from zeitwork.operator.db import changes, events
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.nodes import Node, NodeSpec, NodeStore
from zeitwork.operator.db.tokens import TokenStore
from zeitwork.operator.principal import Scope
from zeitwork.operator.scheduler.subnets import SubnetPool
from zeitwork.operator.services.tokens import TokenService

log = structlog.get_logger("zeitwork.operator.nodes")


@dataclass(frozen=True, slots=True)
class Registration:
    node: Node
    created: bool
    node_token: str | None


class NodeService:
    def __init__(
        self,
        *,
        db: Database,
        nodes: NodeStore,
        tokens: TokenStore,
        token_service: TokenService,
        auth: Authenticator,
        subnet_pool: SubnetPool | None = None,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        self._pool = subnet_pool
        self._heartbeat_timeout = heartbeat_timeout
        self._db = db
        self._nodes = nodes
        self._tokens = tokens
        self._token_service = token_service
        self._auth = auth

    async def register(self, spec: NodeSpec, *, issue_token: bool) -> Registration:
        """Create or update the node; with ``issue_token`` (a join token's registration)
        revoke its old node tokens and issue a fresh one, all in one transaction.

        A join token may take over an existing node only when it is not live (down,
        unknown or error, or silent for the heartbeat timeout: an agent whose data dir was
        lost); a live node is refused with Conflict, since its new credential would receive
        the node's assignments (and their secrets).
        """
        revoked: list[str] = []
        secret: str | None = None
        async with self._db.transaction() as conn:
            node, created = await self._nodes.upsert(spec, conn=conn)
            if (
                issue_token
                and not created
                and await self._nodes.is_live(node.id, self._heartbeat_timeout, conn=conn)
            ):
                # raised inside the transaction: the upsert's update is rolled back
                raise Conflict(
                    f"node {node.id} ({node.hostname}) is live ({node.state.value}, heard from "
                    f"within {self._heartbeat_timeout:g} s); a join token cannot register it "
                    "again: use an admin token or the node's own token, or wait until it is "
                    "down or silent for the heartbeat timeout",
                    extra={"node_id": str(node.id), "state": node.state.value},
                )
            subnet = await self._nodes.assign_subnet(
                node.id, requested=spec.subnet, pool=self._pool, conn=conn
            )
            node = dataclasses.replace(node, subnet=subnet)
            if issue_token:
                revoked = await self._tokens.revoke_for_node(node.id, conn=conn)
                _token, secret = await self._token_service.issue(
                    Scope.NODE, name=f"node {node.hostname}", node_id=node.id, conn=conn
                )
        self._auth.forget(revoked)
        log.info(
            "node.registered",
            node_id=str(node.id),
            hostname=node.hostname,
            created=created,
            subnet=node.subnet,
            token_issued=issue_token,
        )
        return Registration(node=node, created=created, node_token=secret)

    async def delete(self, node_id: uuid.UUID) -> None:
        revoked = await self._nodes.delete(node_id)
        self._auth.forget(revoked)
        log.info("node.deleted", node_id=str(node_id))

    async def drain(self, node_id: uuid.UUID, *, draining: bool = True) -> Node:
        """Drain (``draining``: no new instances; the releases reconciler replaces every
        instance on it elsewhere, health-gated, before stopping them) or undrain
        (``ready``), with its event, waking the reconcile loop."""
        target = NodeState.DRAINING if draining else NodeState.READY
        async with self._db.transaction() as conn:
            before = await self._nodes.get(node_id, conn=conn)
            if before.state is target:
                return before
            if not draining and before.state is not NodeState.DRAINING:
                raise Conflict(
                    f"node {node_id} is {before.state.value}, not draining",
                    extra={"state": before.state.value},
                )
            node = await self._nodes.set_state(node_id, target, expected=before.state, conn=conn)
            await events.record(
                conn,
                "node.drained" if draining else "node.undrained",
                "node drains: its instances move elsewhere" if draining else "node takes work",
                node_id=node_id,
            )
            await changes.bump(conn, changes.RELEASES)
        log.info("node.drain" if draining else "node.undrain", node_id=str(node_id))
        return node

    async def set_state(
        self, node_id: uuid.UUID, target: NodeState, *, expected: NodeState | None = None
    ) -> Node:
        if target is not NodeState.TERMINATED:
            node = await self._nodes.set_state(node_id, target, expected=expected)
            log.info("node.state_changed", node_id=str(node_id), state=target.value)
            return node
        # A terminated node is gone for good: its credentials go with it, in the same
        # transaction, so a leftover agent (or a stolen token) can no longer act for it.
        async with self._db.transaction() as conn:
            node = await self._nodes.set_state(node_id, target, expected=expected, conn=conn)
            revoked = await self._tokens.revoke_for_node(node_id, conn=conn)
        self._auth.forget(revoked)
        log.info(
            "node.state_changed",
            node_id=str(node_id),
            state=target.value,
            tokens_revoked=len(revoked),
        )
        return node
