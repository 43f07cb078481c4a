"""``POST /applications/{app}/portal-links``: a one-use link to the application's portal,
and the service function that trades a link's token for a session.

The token is 32 random bytes; PostgreSQL keeps its SHA-256. Using it is one UPDATE that
only matches an unused, unexpired link, so two browsers racing with the same link cannot
both get a session.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.errors import error_responses
from services.ingest.tenancy import AppTenant
from shared.logging import get_logger
from shared.models import Application, PortalLink

log = get_logger("ingest.portal")

LOGIN_PREFIX = "/portal/login/"
DEFAULT_EXPIRES_IN = 3600


class PortalLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: StrictInt = Field(
        DEFAULT_EXPIRES_IN,
        ge=60,
        le=86400,
        description="seconds the link (and the session it starts) stays valid",
    )


class PortalLinkOut(BaseModel):
    url: str = Field(description="`<this service>/portal/login/<token>`: usable once")
    expires_at: datetime


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_link(
    session: AsyncSession, application_id: uuid.UUID, expires_in: int
) -> tuple[str, PortalLink]:
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    link = PortalLink(
        id=uuid.uuid4(),
        application_id=application_id,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in),
    )
    session.add(link)
    await session.flush()
    return token, link


@dataclass(frozen=True, slots=True)
class Redeemed:
    application_id: uuid.UUID
    expires_at: datetime


class LinkRefused(Exception):
    """The token is unknown (404) or was used or has expired (410)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


async def redeem(sessions: async_sessionmaker[AsyncSession], token: str, now: datetime) -> Redeemed:
    """Use a link once: its application and expiry, or LinkRefused."""
    digest = token_hash(token)
    async with sessions.begin() as session:
        row = (
            await session.execute(
                update(PortalLink)
                .where(
                    PortalLink.token_hash == digest,
                    PortalLink.used_at.is_(None),
                    PortalLink.expires_at > now,
                    PortalLink.application_id.in_(
                        select(Application.id).where(Application.deleted_at.is_(None))
                    ),
                )
                .values(used_at=now)
                .returning(PortalLink.application_id, PortalLink.expires_at)
            )
        ).one_or_none()
        if row is not None:
            return Redeemed(*row)
        known = (
            await session.execute(select(PortalLink.id).where(PortalLink.token_hash == digest))
        ).scalar_one_or_none()
    if known is None:
        raise LinkRefused(404, "This portal link is not valid.")
    raise LinkRefused(410, "This portal link was already used or has expired.")


router = APIRouter(tags=["applications"])


@router.post(
    "/applications/{app}/portal-links",
    status_code=201,
    response_model=PortalLinkOut,
    summary="A one-use link to this application's portal (endpoints, deliveries, retries)",
    responses=error_responses(400, 401, 404, 422),
)
async def create(tenant: AppTenant, request: Request, data: PortalLinkCreate | None = None) -> Any:
    expires_in = data.expires_in if data is not None else DEFAULT_EXPIRES_IN
    async with tenant.begin() as session:
        token, link = await create_link(session, tenant.creates_in, expires_in)
    log.info("portal link created", link_id=str(link.id), **tenant.log_fields())
    base = str(request.base_url).rstrip("/")
    return PortalLinkOut(url=f"{base}{LOGIN_PREFIX}{token}", expires_at=link.expires_at)
