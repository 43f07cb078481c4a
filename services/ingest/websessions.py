"""Browser sessions kept in PostgreSQL, for the dashboard (``ui``) and the portal.

The cookie carries a random token (32 bytes); the table keeps its SHA-256, the session's
CSRF token, its application (portal) and its expiry. Ending a session (logout) marks the
row, so a cookie copied before logout stops working at once, in every ingest process.
One indexed lookup per page view is the price (~0.3 ms), paid only by browsers.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.models import WebSession

UI = "ui"
PORTAL = "portal"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def start_session(
    sessions: async_sessionmaker[AsyncSession],
    *,
    kind: str,
    expires_at: datetime,
    application_id: uuid.UUID | None = None,
) -> tuple[str, WebSession]:
    """A new session; returns the cookie's token (never stored) and the row."""
    token = secrets.token_urlsafe(32)
    row = WebSession(
        id=uuid.uuid4(),
        token_hash=_hash(token),
        kind=kind,
        application_id=application_id,
        csrf=secrets.token_urlsafe(32),
        expires_at=expires_at,
    )
    async with sessions.begin() as session:
        session.add(row)
    return token, row


async def find_session(
    sessions: async_sessionmaker[AsyncSession], token: str | None, *, kind: str, now: datetime
) -> WebSession | None:
    """The live session of this kind for a cookie's token, or None."""
    if not token or len(token) > 100:
        return None
    async with sessions() as session:
        return (
            await session.execute(
                select(WebSession).where(
                    WebSession.token_hash == _hash(token),
                    WebSession.kind == kind,
                    WebSession.ended_at.is_(None),
                    WebSession.expires_at > now,
                )
            )
        ).scalar_one_or_none()


async def end_session(
    sessions: async_sessionmaker[AsyncSession], token: str | None, *, now: datetime
) -> None:
    if not token or len(token) > 100:
        return
    async with sessions.begin() as session:
        await session.execute(
            update(WebSession)
            .where(WebSession.token_hash == _hash(token), WebSession.ended_at.is_(None))
            .values(ended_at=now)
        )
