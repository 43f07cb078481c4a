"""Applications and their keys: the service functions behind the routes.

They take a session the route opened for its tenant (``services.ingest.tenancy``), flush,
and leave the commit to the route.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest.applications.keys import SHOWN_PREFIX, key_hash, mint_key
from services.ingest.applications.schemas import (
    ApiKeyCreate,
    ApplicationCreate,
    ApplicationUpdate,
)
from services.ingest.errors import Conflict, Unprocessable
from services.ingest.pagination import keyset
from shared.models import DEFAULT_APPLICATION_ID, ApiKey, Application, Subscription

DUPLICATE_UID = "an application with this uid exists"


async def create_application(session: AsyncSession, data: ApplicationCreate) -> Application:
    now = datetime.now(UTC)
    app = Application(
        id=uuid.uuid4(),
        uid=data.uid,
        name=data.name,
        metadata_=data.metadata,
        created_at=now,
        updated_at=now,
    )
    session.add(app)
    await _flush_unique(session)
    return app


async def list_applications(
    session: AsyncSession, cursor: str | None, limit: int
) -> Sequence[Application]:
    query = select(Application).where(Application.deleted_at.is_(None))
    query = keyset(query, Application.created_at, Application.id, cursor, limit)
    return (await session.execute(query)).scalars().all()


async def update_application(
    session: AsyncSession, app: Application, patch: ApplicationUpdate
) -> Application:
    fields = patch.model_fields_set
    for name in fields - {"uid"}:
        if getattr(patch, name) is None:
            raise Unprocessable(("body", name), "must not be null")
    if "uid" in fields:
        if app.id == DEFAULT_APPLICATION_ID and patch.uid != "default":
            raise Unprocessable(("body", "uid"), "the default application keeps uid 'default'")
        app.uid = patch.uid
    if patch.name is not None:
        app.name = patch.name
    if patch.metadata is not None:
        app.metadata_ = patch.metadata
    app.updated_at = datetime.now(UTC)
    await _flush_unique(session)
    return app


async def delete_application(session: AsyncSession, app: Application) -> None:
    """Deactivate its subscriptions, revoke its keys, hide it; its history stays."""
    if app.id == DEFAULT_APPLICATION_ID:
        raise Conflict("the default application holds the flat routes' subscriptions")
    now = datetime.now(UTC)
    app.deleted_at = now
    app.updated_at = now
    await session.execute(
        update(Subscription)
        .where(Subscription.application_id == app.id, Subscription.is_active)
        .values(is_active=False, deactivated_reason="application deleted", updated_at=now)
    )
    await session.execute(
        update(ApiKey)
        .where(ApiKey.application_id == app.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.flush()


async def _flush_unique(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        if "ux_applications_uid" in str(exc.orig):
            raise Conflict(DUPLICATE_UID) from None
        raise


# --- keys ---------------------------------------------------------------------------


async def create_key(
    session: AsyncSession, application_id: uuid.UUID, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """The new row and the key itself (the only time it exists outside the caller)."""
    now = datetime.now(UTC)
    if data.expires_at is not None:
        if data.expires_at.tzinfo is None:
            raise Unprocessable(("body", "expires_at"), "must carry a UTC offset")
        if data.expires_at <= now:
            raise Unprocessable(("body", "expires_at"), "must be in the future")
    key = mint_key()
    row = ApiKey(
        id=uuid.uuid4(),
        application_id=application_id,
        name=data.name,
        prefix=key[:SHOWN_PREFIX],
        key_hash=key_hash(key),
        created_at=now,
        expires_at=data.expires_at,
    )
    session.add(row)
    await session.flush()
    return row, key


async def list_keys(session: AsyncSession, cursor: str | None, limit: int) -> Sequence[ApiKey]:
    """The session's application's keys that are not revoked (expired ones included)."""
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    query = keyset(query, ApiKey.created_at, ApiKey.id, cursor, limit)
    return (await session.execute(query)).scalars().all()


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    )
    return result.scalar_one_or_none() is not None
