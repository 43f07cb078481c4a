"""The tenant boundary: who is calling, and the sessions that only see their application.

Every management route gets a ``Tenant`` from one of the dependencies below, and reads and
writes through ``tenant.session()`` / ``tenant.begin()``. A session opened for an
application carries its id in ``Session.info``; one ORM hook (``_scope_statement``) adds
``application_id = <it>`` to every SELECT, UPDATE and DELETE on a tenanted table
(``shared.models.Tenanted``, and ``Application`` by its own id), and one flush hook refuses
to write a row of another application. So isolation is a property of the session, not an
``if`` remembered in each handler: a new route that uses its tenant's session is isolated
without saying so, and another application's object is simply not found (404, never a 403
that would confirm it exists). Raw SQL (``text()``) is not ORM and is not rewritten: the
one place that uses it (statistics) takes ``tenant.application_id`` as a parameter.

Credentials (``Authorization: Bearer …``):

- the operator key (``HOOKSTREAM_API_KEY``): every application. On the flat,
  seed-compatible routes it reads everything and creates in the ``default`` application;
  under ``/applications/{app}/`` it acts as that application.
- a scoped key (``hsk_…``, ``applications/keys.py``): its own application, everywhere.
  A route with no meaning inside one application is a 403 (``operator_only``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from services.ingest.applications.keys import KEY_PREFIX
from services.ingest.applications.schemas import UID_PATTERN
from services.ingest.auth import key_matches
from services.ingest.errors import Forbidden, NotFound, Unauthorized
from services.ingest.resources import from_request
from shared.models import DEFAULT_APPLICATION_ID, Application, Tenanted

# Session.info key holding the application a session is confined to.
TENANT = "hookstream.tenant"

# auto_error=False: a missing header is our 401 in our error shape, not FastAPI's 403.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <key>`: the operator key (HOOKSTREAM_API_KEY) or "
    "an application's scoped key (`hsk_…`)",
)


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    app_id = state.session.info.get(TENANT)
    if app_id is None or state.is_column_load or state.is_relationship_load:
        return
    if state.is_select or state.is_update or state.is_delete:
        # Every model that declares itself Tenanted, found at run time: a new one is
        # scoped without being listed here.
        state.statement = state.statement.options(
            *(
                with_loader_criteria(model, model.application_id == app_id, include_aliases=True)
                for model in Tenanted.__subclasses__()
            ),
            with_loader_criteria(Application, Application.id == app_id, include_aliases=True),
        )


@event.listens_for(Session, "before_flush")
def _refuse_foreign_rows(session: Session, *_: Any) -> None:
    app_id = session.info.get(TENANT)
    if app_id is None:
        return
    for obj in (*session.new, *session.dirty):
        owner = obj.id if isinstance(obj, Application) else getattr(obj, "application_id", None)
        if isinstance(obj, Application | Tenanted) and owner != app_id:
            raise RuntimeError(f"refusing to write a row of another application ({owner})")


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who a request acts for.

    ``application_id`` None means the operator on a flat route: every application is
    visible, and what it creates goes to the ``default`` application.
    """

    sessions: async_sessionmaker[AsyncSession]
    application_id: uuid.UUID | None
    operator: bool
    key_id: uuid.UUID | None = None

    @property
    def creates_in(self) -> uuid.UUID:
        return self.application_id or DEFAULT_APPLICATION_ID

    def session(self) -> AsyncSession:
        """A session that sees only this tenant's rows (all rows for the operator)."""
        info = {} if self.application_id is None else {TENANT: self.application_id}
        return self.sessions(info=info)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """A scoped session in a transaction, committed when the block ends."""
        async with self.session() as session, session.begin():
            yield session

    def log_fields(self) -> dict[str, str]:
        if self.application_id is None:
            return {"caller": "operator"}
        return {
            "caller": "operator" if self.operator else "application-key",
            "application_id": str(self.application_id),
        }


def operator(sessions: async_sessionmaker[AsyncSession]) -> Tenant:
    """The operator on a flat route (the dashboard, which the operator key logs into)."""
    return Tenant(sessions, None, operator=True)


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant of a flat route: the operator (everything) or a key's application."""
    res = from_request(request)
    presented = credentials.credentials if credentials is not None else None
    if key_matches(request.app.state.api_key, presented):
        return operator(res.sessions)
    if presented is not None and presented.startswith(KEY_PREFIX):
        key = await res.keys.authenticate(presented)
        if key is not None:
            return Tenant(res.sessions, key.application_id, operator=False, key_id=key.id)
    raise Unauthorized()


Caller = Annotated[Tenant, Depends(caller)]


async def operator_only(tenant: Caller) -> Tenant:
    """Routes with no meaning inside one application (listing or creating applications)."""
    if not tenant.operator:
        raise Forbidden("this route needs the operator key, not an application's key")
    return tenant


async def resolve_application(session: AsyncSession, app: str) -> Application:
    """``{app}`` is an id or a uid; deleted applications are not found."""
    query = select(Application).where(Application.deleted_at.is_(None))
    try:
        query = query.where(Application.id == uuid.UUID(app))
    except ValueError:
        if not re.fullmatch(UID_PATTERN, app):
            # No uid looks like this, and PostgreSQL refuses a NUL with an error.
            raise NotFound("application not found") from None
        query = query.where(Application.uid == app)
    found = (await session.execute(query.limit(1))).scalar_one_or_none()
    if found is None:
        raise NotFound("application not found")
    return found


async def in_application(
    tenant: Caller,
    app: Annotated[str, Path(min_length=1, max_length=100, description="id or uid")],
) -> Tenant:
    """The tenant of a route under ``/applications/{app}/``: that application, which a
    scoped key only finds when it is its own."""
    async with tenant.session() as session:
        found = await resolve_application(session, app)
    return Tenant(tenant.sessions, found.id, operator=tenant.operator, key_id=tenant.key_id)


AppTenant = Annotated[Tenant, Depends(in_application)]
OperatorTenant = Annotated[Tenant, Depends(operator_only)]
