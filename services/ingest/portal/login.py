"""Opening a portal link, and logging out.

``GET /portal/login/<token>`` trades a one-use link for a session that ends when the
link would have expired, then redirects to ``/portal``. A used or expired link is a 410
page, an unknown one a 404 page: neither starts a session. Failed attempts count towards
the per-address login limit (``login_limit.py``), so tokens cannot be guessed at speed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.ingest import websessions
from services.ingest.login_limit import TooManyAttempts
from services.ingest.portal.links import LOGIN_PREFIX, LinkRefused, redeem
from services.ingest.portal.web import (
    COOKIE,
    PREFIX,
    PortalLoggedIn,
    PortalRoute,
    clear_session_cookie,
    message,
    read_form,
    redirect,
    set_session_cookie,
)
from services.ingest.resources import from_request
from shared.logging import get_logger

log = get_logger("ingest.portal")

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


@router.get(LOGIN_PREFIX + "{token}")
async def open_link(token: str, request: Request) -> Response:
    res = from_request(request)
    address = request.client.host if request.client else "unknown"
    try:
        await res.logins.begin(address)
    except TooManyAttempts as exc:
        response = message(request, 429, "Too many attempts", str(exc.detail))
        response.headers.update(exc.headers)
        return response
    now = datetime.now(UTC)
    try:
        link = await redeem(res.sessions, token, now)
    except LinkRefused as refused:
        log.info("portal link refused", status=refused.status_code)
        return message(request, refused.status_code, "This link cannot be used", refused.reason)
    await res.logins.succeeded(address)
    session_token, _ = await websessions.start_session(
        res.sessions,
        kind=websessions.PORTAL,
        application_id=link.application_id,
        expires_at=link.expires_at,
    )
    response = redirect(request, PREFIX)
    set_session_cookie(response, request, session_token, link.expires_at)
    log.info("portal session started", application_id=str(link.application_id))
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request, portal: PortalLoggedIn) -> Response:
    await read_form(request, portal)
    await websessions.end_session(
        from_request(request).sessions, request.cookies.get(COOKIE), now=datetime.now(UTC)
    )
    response = message(request, 200, "You are logged out", "Open a new portal link to come back.")
    clear_session_cookie(response)
    log.info("portal session ended", application_id=str(portal.application.id))
    return response
