"""Login and logout: the API key is typed once and traded for the session cookie."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.ingest.auth import key_matches
from services.ingest.ui import session as sessions
from services.ingest.ui.web import (
    LOGIN_PATH,
    PREFIX,
    LoggedIn,
    UiRoute,
    current_session,
    read_form,
    redirect,
    render,
    safe_next,
    set_session_cookie,
)
from shared.logging import get_logger

log = get_logger("ingest.ui")

router = APIRouter(route_class=UiRoute, include_in_schema=False)


def _anonymous(request: Request) -> sessions.UiSession:
    """The visitor's session, or a new anonymous one: the login form needs a CSRF token."""
    session = current_session(request)
    if session is None:
        session = sessions.new_session(authenticated=False, now=time.time())
    request.state.ui_session = session
    return session


def _login_page(
    request: Request, session: sessions.UiSession, *, next_url: str, error: str | None = None
) -> Response:
    # The layout shows a logout button to logged-in visitors only; this page has none.
    response = render(
        request,
        "login.html",
        status_code=401 if error else 200,
        next_url=next_url,
        error=error,
        logged_in=False,
    )
    set_session_cookie(response, request, session)
    return response


@router.get(LOGIN_PATH)
async def login_form(request: Request, next: str | None = None) -> Response:
    session = _anonymous(request)
    if session.authenticated:
        return redirect(safe_next(next))
    return _login_page(request, session, next_url=safe_next(next))


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    session = _anonymous(request)
    form = await read_form(request, session)
    next_url = safe_next(form.get("next"))
    if not key_matches(request.app.state.api_key, form.get("api_key")):
        log.warning("dashboard login refused")
        return _login_page(request, session, next_url=next_url, error="That API key is not valid.")
    # A fresh token on login: a token seen before it (a planted cookie) is worth nothing.
    response = redirect(next_url)
    set_session_cookie(response, request, sessions.new_session(authenticated=True, now=time.time()))
    log.info("dashboard login")
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request, session: LoggedIn) -> Response:
    await read_form(request, session)
    response = redirect(LOGIN_PATH)
    response.delete_cookie(sessions.COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response
