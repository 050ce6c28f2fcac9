"""psycopg errors -> ``zeitwork.core.errors``, in this one place.

``translating()`` wraps every database use (``Database.connection``/``transaction`` apply
it); stores only raise core errors. Unreachable database -> ServiceUnavailable (HTTP 503
with ``Retry-After``); unique violation -> Conflict; foreign key to nothing -> InvalidInput;
foreign key still referenced -> Conflict; CHECK violation -> InvalidInput.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout, TooManyRequests

from zeitwork.core.errors import Conflict, InvalidInput, ServiceUnavailable, ZeitworkError

RETRY_AFTER_SECONDS = 5

# Friendly wording for the natural keys that clients can collide on.
UNIQUE_MESSAGES: dict[str, str] = {
    "nodes_hostname_live_key": "a node with this hostname is already registered",
    "nodes_pkey": "a node with this id already exists",
    "nodes_subnet_excl": "the subnet overlaps another node's instance subnet",
    "regions_code_live_key": "a region with this code already exists",
    "organisations_slug_live_key": "an organisation with this slug already exists",
    "projects_slug_live_key": "a project with this slug already exists",
    "project_environments_name_live_key": "the project already has an environment of that name",
    "domains_name_live_key": "this domain is already registered",
    "environment_variables_name_live_key": "the variable is already defined",
    "certificates_domain_live_key": "a certificate for this domain already exists",
    "acme_accounts_directory_live_key": "an ACME account for this directory already exists",
}


def _constraint(exc: psycopg.Error) -> str:
    return exc.diag.constraint_name or "unknown"


def translate(exc: psycopg.Error | PoolTimeout | TooManyRequests) -> ZeitworkError:
    """The core error for one psycopg (or pool) error."""
    if isinstance(exc, PoolTimeout | TooManyRequests):
        return ServiceUnavailable(
            "the database is unreachable or overloaded; try again shortly",
            retry_after=RETRY_AFTER_SECONDS,
        )
    if isinstance(exc, pg.UniqueViolation):
        name = _constraint(exc)
        return Conflict(UNIQUE_MESSAGES.get(name, f"conflicts with an existing row ({name})"))
    if isinstance(exc, pg.ExclusionViolation):
        name = _constraint(exc)
        return Conflict(UNIQUE_MESSAGES.get(name, f"overlaps an existing row ({name})"))
    if isinstance(exc, pg.ForeignKeyViolation):
        name = _constraint(exc)
        message = exc.diag.message_detail or ""
        if "is not present in table" in message:
            return InvalidInput(f"a referenced row does not exist ({name})")
        return Conflict(f"the row is still referenced ({name})")
    if isinstance(exc, pg.CheckViolation | pg.NotNullViolation):
        return InvalidInput(f"the value is not allowed ({_constraint(exc)})")
    if isinstance(exc, pg.NumericValueOutOfRange):
        return InvalidInput("a number is outside the range the database holds for it")
    # psycopg.DataError, not pg.DataException: every SQLSTATE class 22 error subclasses
    # the former (pg.DataException is only the bare 22000 code), and so does a client-side
    # refusal (a NUL character psycopg will not send)
    if isinstance(exc, psycopg.DataError):
        return InvalidInput("a value has the wrong form for the database")
    if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected | pg.LockNotAvailable):
        return Conflict("a concurrent change won; retry the request")
    if isinstance(exc, pg.QueryCanceled):
        return ServiceUnavailable("the database did not answer in time", retry_after=1)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ServiceUnavailable(
            "the database is unreachable; try again shortly", retry_after=RETRY_AFTER_SECONDS
        )
    return ZeitworkError("unexpected database error")


@contextmanager
def translating() -> Iterator[None]:
    try:
        yield
    except ZeitworkError:
        raise
    except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
        translated = translate(exc)
        if type(translated) is ZeitworkError:
            raise  # a real bug: let the 500 handler log it with its traceback
        raise translated from exc
