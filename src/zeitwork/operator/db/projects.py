"""Projects, their domains and deployments (create, list, get, soft delete, domain binding).

Any change to which deployment a live domain points at bumps the ``routes`` version in the
same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.core.errors import Conflict, InvalidInput, NotFound
from zeitwork.core.states import DeploymentState
from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.pages import PAGE_SQL, Page, PageRequest, page_of


@dataclass(frozen=True, slots=True)
class Project:
    id: uuid.UUID
    name: str
    slug: str
    github_repo: str | None
    default_branch: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Domain:
    id: uuid.UUID
    name: str
    project_id: uuid.UUID | None
    deployment_id: uuid.UUID | None
    verified: bool
    verified_at: datetime | None
    created_at: datetime
    updated_at: datetime
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    edge_policy: dict[str, Any] | None = None
    verification_token: str | None = field(default=None, repr=False)
    path_rate_limits: list[dict[str, Any]] | None = None
    project_environment_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    id: uuid.UUID
    project_id: uuid.UUID
    image_id: uuid.UUID | None
    state: DeploymentState
    state_changed_at: datetime
    replicas: int
    default_port: int | None
    vcpu_millis: int | None
    memory_mib: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime


_P_COLUMNS = "id, name, slug, github_repo, default_branch, created_at, updated_at"
_D_COLUMNS = (
    "id, name, project_id, deployment_id, verified, verified_at, created_at, updated_at, "
    "rate_limit_rps, rate_limit_burst, edge_policy, verification_token, path_rate_limits, "
    "project_environment_id"
)
_DEP_COLUMNS = (
    "id, project_id, image_id, state, state_changed_at, replicas, default_port, vcpu_millis, "
    "memory_mib, error, created_at, updated_at"
)


def _deployment(row: dict[str, Any]) -> Deployment:
    return Deployment(**(row | {"state": DeploymentState(row["state"])}))


async def _one(c: Conn, sql: str, params: Any) -> dict[str, Any] | None:
    async with c.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def _all(c: Conn, sql: str, params: Any) -> list[dict[str, Any]]:
    async with c.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


class ProjectStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    # -- projects ------------------------------------------------------------------------

    async def create_project(
        self,
        *,
        name: str,
        slug: str,
        github_repo: str | None,
        default_branch: str,
        conn: Conn | None = None,
    ) -> Project:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                "INSERT INTO projects (name, slug, github_repo, default_branch) "
                f"VALUES (%s, %s, %s, %s) RETURNING {_P_COLUMNS}",
                (name, slug, github_repo, default_branch),
            )
        assert row is not None
        return Project(**row)

    async def get_project(self, project_id: uuid.UUID, *, conn: Conn | None = None) -> Project:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_P_COLUMNS} FROM projects WHERE id = %s AND deleted_at IS NULL",
                (project_id,),
            )
        if row is None:
            raise NotFound(f"project {project_id} does not exist")
        return Project(**row)

    async def project_by_ref(self, ref: str, *, conn: Conn | None = None) -> Project:
        """A project by its id or its slug (NotFound for neither)."""
        try:
            return await self.get_project(uuid.UUID(ref), conn=conn)
        except ValueError:
            pass
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_P_COLUMNS} FROM projects WHERE slug = %s AND deleted_at IS NULL "
                "ORDER BY created_at LIMIT 1",
                (ref,),
            )
        if row is None:
            raise NotFound(f"project {ref[:100]!r} does not exist")
        return Project(**row)

    async def list_projects(self, page: PageRequest, *, conn: Conn | None = None) -> Page[Project]:
        async with self._db.connection(conn) as c:
            rows = await _all(
                c,
                f"SELECT {_P_COLUMNS} FROM projects WHERE deleted_at IS NULL" + PAGE_SQL,
                page.params(),
            )
        return page_of([Project(**r) for r in rows], page)

    async def delete_project(self, project_id: uuid.UUID, *, conn: Conn | None = None) -> None:
        """Soft-delete a project with its domains; Conflict while any instance of its
        deployments is not terminated."""
        async with self._db.transaction(conn) as c:
            row = await _one(
                c,
                "SELECT id FROM projects WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                (project_id,),
            )
            if row is None:
                raise NotFound(f"project {project_id} does not exist")
            live = await _one(
                c,
                "SELECT count(*) AS n FROM instances i LEFT JOIN deployments d "
                "ON d.id = i.deployment_id LEFT JOIN releases r ON r.id = i.release_id "
                "WHERE (d.project_id = %s OR r.project_id = %s) AND i.state <> 'terminated'",
                (project_id, project_id),
            )
            if live and live["n"]:
                raise Conflict(
                    f"project {project_id} still has {live['n']} instance(s) that are not "
                    "terminated",
                    extra={"instances": live["n"]},
                )
            cur = await c.execute(
                "UPDATE domains SET deleted_at = now() WHERE project_id = %s "
                "AND deleted_at IS NULL RETURNING coalesce(deployment_id, project_environment_id)",
                (project_id,),
            )
            unbound = [r for r in await cur.fetchall() if r[0] is not None]
            await c.execute(
                "UPDATE deployments SET deleted_at = now() WHERE project_id = %s "
                "AND deleted_at IS NULL",
                (project_id,),
            )
            await c.execute(
                "UPDATE project_environments SET deleted_at = now() WHERE project_id = %s "
                "AND deleted_at IS NULL",
                (project_id,),
            )
            await c.execute("UPDATE projects SET deleted_at = now() WHERE id = %s", (project_id,))
            if unbound:
                await changes.bump(c, changes.ROUTES)

    # -- domains -------------------------------------------------------------------------

    async def _check_binding(
        self, c: Conn, project_id: uuid.UUID | None, deployment_id: uuid.UUID | None
    ) -> None:
        if deployment_id is None:
            return
        row = await _one(
            c,
            "SELECT project_id FROM deployments WHERE id = %s AND deleted_at IS NULL",
            (deployment_id,),
        )
        if row is None:
            raise InvalidInput(f"deployment {deployment_id} does not exist")
        if project_id is not None and row["project_id"] != project_id:
            raise InvalidInput(f"deployment {deployment_id} belongs to another project")

    async def _check_environment(
        self, c: Conn, project_id: uuid.UUID | None, environment_id: uuid.UUID | None
    ) -> None:
        if environment_id is None:
            return
        row = await _one(
            c,
            "SELECT project_id FROM project_environments WHERE id = %s AND deleted_at IS NULL",
            (environment_id,),
        )
        if row is None:
            raise InvalidInput(f"environment {environment_id} does not exist")
        if project_id is not None and row["project_id"] != project_id:
            raise InvalidInput(f"environment {environment_id} belongs to another project")

    async def create_domain(
        self,
        *,
        name: str,
        project_id: uuid.UUID,
        deployment_id: uuid.UUID | None,
        verification_token: str,
        project_environment_id: uuid.UUID | None = None,
        conn: Conn | None = None,
    ) -> Domain:
        async with self._db.transaction(conn) as c:
            await self.get_project(project_id, conn=c)
            await self._check_binding(c, project_id, deployment_id)
            await self._check_environment(c, project_id, project_environment_id)
            row = await _one(
                c,
                "INSERT INTO domains (name, project_id, deployment_id, verification_token, "
                f"project_environment_id) VALUES (%s, %s, %s, %s, %s) RETURNING {_D_COLUMNS}",
                (name, project_id, deployment_id, verification_token, project_environment_id),
            )
            if deployment_id is not None or project_environment_id is not None:
                await changes.bump(c, changes.ROUTES)
        assert row is not None
        return Domain(**row)

    async def bind_domain(
        self,
        domain_id: uuid.UUID,
        deployment_id: uuid.UUID | None,
        *,
        project_environment_id: uuid.UUID | None = None,
        conn: Conn | None = None,
    ) -> Domain:
        """Route the domain to an environment (its current release) or, as before
        releases, to a deployment; both None unbinds."""
        async with self._db.transaction(conn) as c:
            current = await self.get_domain(domain_id, conn=c)
            await self._check_binding(c, current.project_id, deployment_id)
            await self._check_environment(c, current.project_id, project_environment_id)
            return await self._update_routed(
                c,
                current,
                deployment_id=deployment_id,
                project_environment_id=project_environment_id,
            )

    async def set_domain_rate_limit(
        self,
        domain_id: uuid.UUID,
        rps: float | None,
        burst: int | None,
        *,
        conn: Conn | None = None,
    ) -> Domain:
        """The edge's per-client limit for this host (None: the edge's global one)."""
        async with self._db.transaction(conn) as c:
            current = await self.get_domain(domain_id, conn=c)
            return await self._update_routed(c, current, rate_limit_rps=rps, rate_limit_burst=burst)

    async def set_domain_edge_policy(
        self, domain_id: uuid.UUID, policy: dict[str, Any] | None, *, conn: Conn | None = None
    ) -> Domain:
        """The domain's CORS / security-header policy at the edges (None: their global one),
        validated by the caller."""
        async with self._db.transaction(conn) as c:
            current = await self.get_domain(domain_id, conn=c)
            return await self._update_routed(c, current, edge_policy=policy)

    async def set_domain_path_rate_limits(
        self,
        domain_id: uuid.UUID,
        limits: list[dict[str, Any]] | None,
        *,
        conn: Conn | None = None,
    ) -> Domain:
        """Rate limits for path prefixes of this host (None: none), validated by the caller;
        each becomes a route of its own in the route table."""
        async with self._db.transaction(conn) as c:
            current = await self.get_domain(domain_id, conn=c)
            return await self._update_routed(c, current, path_rate_limits=limits)

    async def _update_routed(self, c: Conn, current: Domain, **columns: Any) -> Domain:
        """Set columns of a domain that the route table carries, bumping its version only
        when a value changes."""
        assignments = ", ".join(f"{name} = %s" for name in columns)
        values = [Jsonb(v) if isinstance(v, dict | list) else v for v in columns.values()]
        row = await _one(
            c,
            f"UPDATE domains SET {assignments} WHERE id = %s RETURNING {_D_COLUMNS}",
            (*values, current.id),
        )
        if any(getattr(current, name) != value for name, value in columns.items()):
            await changes.bump(c, changes.ROUTES)
        assert row is not None
        return Domain(**row)

    async def mark_domain_verified(
        self, domain_id: uuid.UUID, *, conn: Conn | None = None
    ) -> Domain:
        """Verified from now on; the route table (which tells edges which hosts may get ACME
        certificates) is bumped when this changes it."""
        async with self._db.transaction(conn) as c:
            row = await _one(
                c,
                "UPDATE domains SET verified = true, verified_at = now() "
                f"WHERE id = %s AND deleted_at IS NULL AND NOT verified RETURNING {_D_COLUMNS}",
                (domain_id,),
            )
            if row is None:
                return await self.get_domain(domain_id, conn=c)  # gone (404) or already
            await changes.bump(c, changes.ROUTES)
        return Domain(**row)

    async def get_domain(self, domain_id: uuid.UUID, *, conn: Conn | None = None) -> Domain:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_D_COLUMNS} FROM domains WHERE id = %s AND deleted_at IS NULL",
                (domain_id,),
            )
        if row is None:
            raise NotFound(f"domain {domain_id} does not exist")
        return Domain(**row)

    async def list_domains(
        self,
        page: PageRequest,
        *,
        project_id: uuid.UUID | None = None,
        deployment_id: uuid.UUID | None = None,
        conn: Conn | None = None,
    ) -> Page[Domain]:
        async with self._db.connection(conn) as c:
            rows = await _all(
                c,
                f"SELECT {_D_COLUMNS} FROM domains WHERE deleted_at IS NULL "
                "AND (%(project)s::uuid IS NULL OR project_id = %(project)s::uuid) "
                "AND (%(dep)s::uuid IS NULL OR deployment_id = %(dep)s::uuid)" + PAGE_SQL,
                {"project": project_id, "dep": deployment_id} | page.params(),
            )
        return page_of([Domain(**r) for r in rows], page)

    async def delete_domain(self, domain_id: uuid.UUID, *, conn: Conn | None = None) -> None:
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "UPDATE domains SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL "
                "RETURNING coalesce(deployment_id, project_environment_id)",
                (domain_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"domain {domain_id} does not exist")
            if row[0] is not None:
                await changes.bump(c, changes.ROUTES)

    # -- deployments ---------------------------------------------------------------------

    async def create_deployment(
        self,
        *,
        project_id: uuid.UUID,
        image_id: uuid.UUID,
        replicas: int,
        default_port: int,
        vcpu_millis: int,
        memory_mib: int,
        conn: Conn,
    ) -> Deployment:
        await self.get_project(project_id, conn=conn)
        row = await _one(
            conn,
            "INSERT INTO deployments (project_id, image_id, state, replicas, default_port, "
            "vcpu_millis, memory_mib) VALUES (%s, %s, 'deploying', %s, %s, %s, %s) "
            f"RETURNING {_DEP_COLUMNS}",
            (project_id, image_id, replicas, default_port, vcpu_millis, memory_mib),
        )
        assert row is not None
        return _deployment(row)

    async def get_deployment(
        self, deployment_id: uuid.UUID, *, conn: Conn | None = None
    ) -> tuple[Deployment, list[uuid.UUID]]:
        async with self._db.connection(conn) as c:
            row = await _one(
                c,
                f"SELECT {_DEP_COLUMNS} FROM deployments WHERE id = %s AND deleted_at IS NULL",
                (deployment_id,),
            )
            if row is None:
                raise NotFound(f"deployment {deployment_id} does not exist")
            cur = await c.execute(
                "SELECT instance_id FROM deployment_instances WHERE deployment_id = %s "
                "AND deleted_at IS NULL ORDER BY instance_id",
                (deployment_id,),
            )
            instance_ids = [r[0] for r in await cur.fetchall()]
        return _deployment(row), instance_ids

    async def list_deployments(
        self,
        page: PageRequest,
        *,
        project_id: uuid.UUID | None = None,
        state: DeploymentState | None = None,
        conn: Conn | None = None,
    ) -> Page[Deployment]:
        async with self._db.connection(conn) as c:
            rows = await _all(
                c,
                f"SELECT {_DEP_COLUMNS} FROM deployments WHERE deleted_at IS NULL "
                "AND (%(project)s::uuid IS NULL OR project_id = %(project)s::uuid) "
                "AND (%(state)s::text IS NULL OR state = %(state)s::text)" + PAGE_SQL,
                {"project": project_id, "state": None if state is None else state.value}
                | page.params(),
            )
        return page_of([_deployment(r) for r in rows], page)
