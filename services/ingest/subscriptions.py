"""Subscriptions: CRUD routes, the service functions behind them, and cache invalidation.

Routes own the transaction (commit), service functions flush, and both work in the
caller's tenant session (``tenancy.py``): an application's key sees and changes only its
own subscriptions, and the flat routes create in the ``default`` application for the
operator. After a change is
committed, every process's cache is told (Redis pub/sub, ``shared.subscriptions``) and this
process's own cache applies it before answering, so a client that changes a subscription
and then sends a webhook sees its change.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from services.ingest.errors import NotFound, Unprocessable, error_responses
from services.ingest.pagination import Cursor, Limit, Page, keyset, page
from services.ingest.resources import Resources, from_request
from services.ingest.schemas import (
    SecretRotate,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionOut,
    SubscriptionUpdate,
)
from services.ingest.tenancy import AppTenant, Caller, Tenant
from shared.logging import get_logger
from shared.models import DEFAULT_APPLICATION_ID, Subscription
from shared.signing import WHSEC_PREFIX
from shared.subscriptions import notify_changed

log = get_logger("ingest.subscriptions")

MAX_PAGE = 1000
# 32 random bytes, as the contract says: 256 bits of key.
SECRET_BYTES = 32
_SCHEMES = frozenset({"http", "https"})


# --- core ---------------------------------------------------------------------------


def check_target_url(url: str, max_length: int) -> str:
    """An absolute http(s) URL with a host, within the length limit.

    Whether the host is safe to call (SSRF) is decided at delivery time, after DNS
    resolution, by the dispatcher; here we only refuse what can never be delivered.
    """
    loc = ("body", "target_url")
    if len(url) > max_length:
        raise Unprocessable(loc, f"must be at most {max_length} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise Unprocessable(loc, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        raise Unprocessable(loc, "is not a valid URL") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise Unprocessable(loc, "must be an http or https URL")
    if not parts.hostname:
        raise Unprocessable(loc, "must name a host")
    return url


async def create_subscription(
    session: AsyncSession,
    data: SubscriptionCreate,
    *,
    application_id: uuid.UUID = DEFAULT_APPLICATION_ID,
    max_url_length: int,
) -> Subscription:
    now = datetime.now(UTC)
    sub = Subscription(
        id=uuid.uuid4(),
        application_id=application_id,
        target_url=check_target_url(data.target_url, max_url_length),
        secret_key=data.secret_key,
        event_types=_unique(data.event_types),
        is_active=data.is_active,
        filter=data.filter,
        headers=data.headers,
        rate_limit=data.rate_limit,
        ordered=data.ordered,
        failure_streak=0,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    await session.flush()
    return sub


async def list_subscriptions(
    session: AsyncSession, *, skip: int, limit: int
) -> Sequence[Subscription]:
    """The seed's plain list, oldest first, by offset."""
    query = (
        select(Subscription)
        .order_by(Subscription.created_at, Subscription.id)
        .offset(skip)
        .limit(min(limit, MAX_PAGE))
    )
    return (await session.execute(query)).scalars().all()


async def page_subscriptions(
    session: AsyncSession, cursor: str | None, limit: int
) -> Sequence[Subscription]:
    """Newest first, by cursor (the application routes)."""
    query = keyset(select(Subscription), Subscription.created_at, Subscription.id, cursor, limit)
    return (await session.execute(query)).scalars().all()


async def get_subscription(
    session: AsyncSession, subscription_id: uuid.UUID, *, for_update: bool = False
) -> Subscription:
    sub = await session.get(Subscription, subscription_id, with_for_update=for_update)
    if sub is None:
        raise NotFound("subscription not found")
    return sub


async def update_subscription(
    session: AsyncSession,
    subscription_id: uuid.UUID,
    patch: SubscriptionUpdate,
    *,
    max_url_length: int,
) -> Subscription:
    # Locked: a DELETE committed between our read and our UPDATE would leave the UPDATE
    # matching no row (a 500). With the lock, the read waits for it and finds nothing.
    sub = await get_subscription(session, subscription_id, for_update=True)
    fields = patch.model_fields_set
    for name in fields - {"secret_key", "filter", "headers", "rate_limit"}:
        if getattr(patch, name) is None:
            raise Unprocessable(("body", name), "must not be null")
    if "target_url" in fields and patch.target_url is not None:
        sub.target_url = check_target_url(patch.target_url, max_url_length)
    if "secret_key" in fields:
        # Replaced or removed at once: the overlap is what /secret/rotate is for.
        sub.secret_key = patch.secret_key  # null removes the secret
        sub.previous_secret_key = None
        sub.previous_secret_expires_at = None
    if "filter" in fields:
        sub.filter = patch.filter  # null removes the filter
    if "headers" in fields:
        sub.headers = patch.headers  # null removes them
    if "rate_limit" in fields:
        sub.rate_limit = patch.rate_limit  # null removes the limit
    if "ordered" in fields and patch.ordered is not None:
        sub.ordered = patch.ordered
    if "event_types" in fields and patch.event_types is not None:
        sub.event_types = _unique(patch.event_types)
    if "is_active" in fields and patch.is_active is not None:
        sub.is_active = patch.is_active
        if patch.is_active:
            # Reactivation by hand clears the automatic deactivation's bookkeeping.
            sub.deactivated_reason = None
            sub.failure_streak = 0
            sub.failing_since = None
    sub.updated_at = datetime.now(UTC)
    await session.flush()
    return sub


def generate_secret() -> str:
    """A Standard Webhooks secret: receivers' libraries take it as it is."""
    return WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


async def rotate_secret(
    session: AsyncSession, subscription_id: uuid.UUID, data: SecretRotate
) -> tuple[Subscription, str]:
    """A new secret; the current one keeps signing and verifying for the overlap (a
    subscription without a secret gets one, with nothing to overlap)."""
    sub = await get_subscription(session, subscription_id, for_update=True)
    now = datetime.now(UTC)
    secret = data.secret_key or generate_secret()
    if sub.secret_key is not None and data.overlap_seconds > 0:
        sub.previous_secret_key = sub.secret_key
        sub.previous_secret_expires_at = now + timedelta(seconds=data.overlap_seconds)
    else:
        sub.previous_secret_key = None
        sub.previous_secret_expires_at = None
    sub.secret_key = secret
    sub.secret_rotated_at = now
    sub.updated_at = now
    await session.flush()
    return sub, secret


async def delete_subscription(session: AsyncSession, subscription_id: uuid.UUID) -> None:
    """The row goes; its delivery attempts stay readable (they have no foreign key)."""
    result = await session.execute(
        delete(Subscription).where(Subscription.id == subscription_id).returning(Subscription.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("subscription not found")


async def announce_change(res: Resources, subscription_id: uuid.UUID) -> None:
    """After commit: tell every process, and refresh this one's cache before answering."""
    await notify_changed(res.redis, res.settings.topic_prefix, subscription_id)
    try:
        await res.cache.refresh()
    except Exception as exc:  # the poller retries; the change is committed either way
        log.warning("subscription cache refresh failed", error=type(exc).__name__)


def _unique(event_types: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(event_types))


# --- HTTP ---------------------------------------------------------------------------

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])
app_router = APIRouter(prefix="/applications/{app}/subscriptions", tags=["subscriptions"])


async def _create(data: SubscriptionCreate, tenant: Tenant, request: Request) -> Subscription:
    res = from_request(request)
    async with tenant.begin() as session:
        sub = await create_subscription(
            session,
            data,
            application_id=tenant.creates_in,
            max_url_length=res.settings.max_url_length,
        )
    await announce_change(res, sub.id)
    log.info(
        "subscription created",
        subscription_id=str(sub.id),
        application_id=str(sub.application_id),
        signed=sub.secret_key is not None,
    )
    return sub


@router.post(
    "/",
    status_code=201,
    response_model=SubscriptionCreated,
    summary="Create a subscription (the only answer that shows its secret_key); in the "
    "default application, or in the key's own",
    responses=error_responses(400, 401, 422),
)
async def create(data: SubscriptionCreate, tenant: Caller, request: Request) -> Subscription:
    return await _create(data, tenant, request)


@app_router.post(
    "",
    status_code=201,
    response_model=SubscriptionCreated,
    summary="Create a subscription in this application (the only answer showing secret_key)",
    responses=error_responses(400, 401, 404, 422),
)
async def create_in_application(
    data: SubscriptionCreate, tenant: AppTenant, request: Request
) -> Subscription:
    return await _create(data, tenant, request)


@app_router.get(
    "",
    response_model=Page[SubscriptionOut],
    summary="This application's subscriptions, newest first (never their secrets)",
    responses=error_responses(401, 404, 422),
)
async def list_in_application(
    tenant: AppTenant, limit: Limit = 50, cursor: Cursor = None
) -> Page[SubscriptionOut]:
    async with tenant.session() as session:
        rows = await page_subscriptions(session, cursor, limit)
    return page(rows, limit, SubscriptionOut.model_validate)


@router.get(
    "/",
    response_model=list[SubscriptionOut],
    summary="List subscriptions, oldest first (never their secrets)",
    responses=error_responses(401, 422),
)
async def list_(
    tenant: Caller,
    skip: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Sequence[Subscription]:
    async with tenant.session() as session:
        return await list_subscriptions(session, skip=skip, limit=limit)


@router.get(
    "/{subscription_id}",
    response_model=SubscriptionOut,
    summary="One subscription (never its secret)",
    responses=error_responses(401, 404, 422),
)
async def get(subscription_id: uuid.UUID, tenant: Caller) -> Subscription:
    async with tenant.session() as session:
        return await get_subscription(session, subscription_id)


@router.patch(
    "/{subscription_id}",
    response_model=SubscriptionOut,
    summary="Change fields of a subscription; `secret_key: null` removes its secret",
    responses=error_responses(400, 401, 404, 422),
)
async def update(
    subscription_id: uuid.UUID, patch: SubscriptionUpdate, tenant: Caller, request: Request
) -> Subscription:
    res = from_request(request)
    async with tenant.begin() as session:
        sub = await update_subscription(
            session, subscription_id, patch, max_url_length=res.settings.max_url_length
        )
    await announce_change(res, sub.id)
    log.info(
        "subscription updated",
        subscription_id=str(sub.id),
        application_id=str(sub.application_id),
        fields=sorted(patch.model_fields_set),
    )
    return sub


@router.delete(
    "/{subscription_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a subscription; its delivery history stays readable",
    responses=error_responses(401, 404, 422),
)
async def remove(subscription_id: uuid.UUID, tenant: Caller, request: Request) -> Response:
    res = from_request(request)
    async with tenant.begin() as session:
        await delete_subscription(session, subscription_id)
    await announce_change(res, subscription_id)
    log.info("subscription deleted", subscription_id=str(subscription_id), **tenant.log_fields())
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/secret/rotate",
    response_model=SubscriptionCreated,
    summary="A new secret (shown in this answer only); the previous one keeps signing and "
    "verifying for overlap_seconds",
    responses=error_responses(400, 401, 404, 422),
)
async def rotate(
    subscription_id: uuid.UUID,
    tenant: Caller,
    request: Request,
    data: SecretRotate | None = None,
) -> Any:
    res = from_request(request)
    async with tenant.begin() as session:
        sub, secret = await rotate_secret(session, subscription_id, data or SecretRotate())
    await announce_change(res, sub.id)
    log.info(
        "subscription secret rotated",
        subscription_id=str(sub.id),
        application_id=str(sub.application_id),
        overlap_until=sub.previous_secret_expires_at.isoformat()
        if sub.previous_secret_expires_at
        else None,
    )
    return SubscriptionCreated.model_validate(sub).model_copy(update={"secret_key": secret})
