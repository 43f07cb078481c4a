"""Login and logout: the API key is typed once and traded for a server-side session.

A client address that failed ``login_limit.LIMIT`` times this minute is refused (429 with
``Retry-After``) before its key is even compared, a correct key included: otherwise the
limit would only slow a guesser down, and the answer to a lucky guess would tell it so.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.ingest.auth import key_matches
from services.ingest.resources import from_request
from services.ingest.ui import session as cookies
from services.ingest.ui.web import (
    LOGIN_PATH,
    PREFIX,
    LoggedIn,
    UiRoute,
    UiSession,
    clear_cookie,
    current_session,
    read_form,
    redirect,
    render,
    safe_next,
    set_login_cookie,
    set_session_cookie,
)
from services.ingest.websessions import UI, end_session, start_session
from shared.logging import get_logger

log = get_logger("ingest.ui")

router = APIRouter(route_class=UiRoute, include_in_schema=False)


def _anonymous(request: Request) -> UiSession:
    """The login form's session: no row, only the CSRF token of the double-submit cookie."""
    csrf = cookies.login_csrf_of(request.cookies.get(cookies.LOGIN_COOKIE))
    session = UiSession(csrf or cookies.new_csrf())
    request.state.ui_session = session
    return session


def _login_page(
    request: Request, session: UiSession, *, next_url: str, error: str | None = None
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
    set_login_cookie(response, request, session.csrf)
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get(LOGIN_PATH)
async def login_form(request: Request, next: str | None = None) -> Response:
    if await current_session(request) is not None:
        return redirect(safe_next(next))
    return _login_page(request, _anonymous(request), next_url=safe_next(next))


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    res = from_request(request)
    address = _client(request)
    await res.logins.check(address)  # TooManyAttempts: a 429 page with Retry-After
    # Only a token that came with the form's cookie counts: one made up now matches nothing.
    session = UiSession(cookies.login_csrf_of(request.cookies.get(cookies.LOGIN_COOKIE)) or "")
    request.state.ui_session = session
    form = await read_form(request, session)
    # Counted before the key is compared: a burst of concurrent guesses cannot all pass a
    # check made before any of them failed.
    await res.logins.begin(address)
    next_url = safe_next(form.get("next"))
    api_key: bytes | None = request.app.state.api_key
    if api_key is None or not key_matches(api_key, form.get("api_key")):
        log.warning("dashboard login refused", client=address)
        return _login_page(request, session, next_url=next_url, error="That API key is not valid.")
    await res.logins.succeeded(address)
    # A new random token on login: nothing seen before it (a planted cookie) is worth anything.
    token, _ = await start_session(
        res.sessions, kind=UI, expires_at=datetime.now(UTC) + cookies.LIFETIME
    )
    response = redirect(next_url)
    set_session_cookie(response, request, token)
    clear_cookie(response, request, cookies.LOGIN_COOKIE, path=LOGIN_PATH)
    log.info("dashboard login", client=address)
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request, session: LoggedIn) -> Response:
    await read_form(request, session)
    # Ends the row, not only the cookie: a copy taken earlier stops working too.
    await end_session(from_request(request).sessions, session.token, now=datetime.now(UTC))
    response = redirect(LOGIN_PATH)
    clear_cookie(response, request, cookies.COOKIE, path=PREFIX)
    log.info("dashboard logout")
    return response
