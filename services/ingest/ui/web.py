"""HTML plumbing for the dashboard's routes: templates, responses, the login gate, forms.

Every page is rendered by Jinja2 with autoescaping on for every template: payloads,
response excerpts, error texts and event types are attacker-controlled. The Content
Security Policy below is the second wall: even a value that escaped escaping could not
run a script (only our own static file may), load anything from elsewhere, or post a form
anywhere but here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from services.ingest.errors import BadRequest, HookstreamError
from services.ingest.resources import from_request
from services.ingest.ui import session as cookies
from services.ingest.websessions import UI, find_session

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/ui"
LOGIN_PATH = f"{PREFIX}/login"

templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    return "—" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _percent(value: float | None) -> str:
    if value is None:
        return "—"
    # 99.96% is not 100.0%: one more decimal near the top, where the difference matters.
    return f"{value * 100:.2f}%" if 0.99 <= value < 1 else f"{value * 100:.1f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


templates.filters.update(when=_when, percent=_percent, seconds=_seconds)


def compile_templates() -> None:
    """Compile every template now (start-up), not during some viewer's first request."""
    for name in templates.list_templates():
        templates.get_template(name)


SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show subscriptions and payloads: nothing for a shared cache or the back button.
    "Cache-Control": "no-store",
}

# A form here has a handful of short fields; anything bigger is not one of ours.
MAX_FORM_FIELDS = 20


class LoginRequired(Exception):
    """No valid logged-in session: the route answers with a redirect to the login form."""


class CsrfRejected(HookstreamError):
    status_code = 403
    default_detail = (
        "this form has expired or did not come from this dashboard: reload the page and "
        "submit it again"
    )


@dataclass(frozen=True, slots=True)
class UiSession:
    """A request's session: its CSRF token and, once logged in, the session's token."""

    csrf: str
    token: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.token is not None


async def current_session(request: Request) -> UiSession | None:
    """The logged-in session named by the cookie (one indexed lookup), or None."""
    token = cookies.token_of(request.cookies.get(cookies.COOKIE), request.app.state.api_key)
    if token is None:
        return None
    row = await find_session(from_request(request).sessions, token, kind=UI, now=datetime.now(UTC))
    return None if row is None else UiSession(row.csrf, token)


async def require_login(request: Request) -> UiSession:
    session = await current_session(request)
    if session is None:
        raise LoginRequired()
    request.state.ui_session = session  # the layout's logout form needs its token
    return session


LoggedIn = Annotated[UiSession, Depends(require_login)]


def _set_cookie(
    response: Response, request: Request, name: str, value: str, *, path: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        # Behind a TLS proxy that speaks plain HTTP to us this stays off; the cookie is
        # still HttpOnly and SameSite=Strict.
        secure=request.url.scheme == "https",
    )


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    api_key: bytes = request.app.state.api_key
    value = cookies.cookie_value(token, api_key)
    max_age = int(cookies.LIFETIME.total_seconds())
    _set_cookie(response, request, cookies.COOKIE, value, path=PREFIX, max_age=max_age)


def set_login_cookie(response: Response, request: Request, csrf: str) -> None:
    max_age = int(cookies.LOGIN_CSRF_LIFETIME.total_seconds())
    _set_cookie(response, request, cookies.LOGIN_COOKIE, csrf, path=LOGIN_PATH, max_age=max_age)


def clear_cookie(response: Response, request: Request, name: str, *, path: str) -> None:
    _set_cookie(response, request, name, "", path=path, max_age=0)


async def read_form(request: Request, session: UiSession) -> dict[str, str]:
    """The fields of an urlencoded form post, once its CSRF token matched the session's.

    Anything that is not such a form has no token, so it is refused like a wrong one (403).
    """
    form: dict[str, str] = {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body = (await request.body()).decode("utf-8", "replace")
        try:
            fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise BadRequest("too many form fields") from None
        form = {name: values[0] for name, values in fields.items()}
    if not cookies.csrf_matches(session.csrf, form.get("csrf")):
        raise CsrfRejected()
    return form


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> Response:
    session: UiSession | None = getattr(request.state, "ui_session", None)
    values = {
        "csrf": session.csrf if session else "",
        "logged_in": session is not None and session.authenticated,
        "path": request.url.path,
        **context,
    }
    html = templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def redirect(url: str) -> Response:
    """303: after a form post the browser follows with a GET (no re-post on reload)."""
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    return redirect(f"{LOGIN_PATH}?next={quote(target, safe='')}")


def safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path on this host, never another site."""
    if value and value.startswith(PREFIX) and not value.startswith(LOGIN_PATH):
        return value
    return PREFIX


def describe(exc: HookstreamError) -> str:
    """One line for a person: a validation error's messages, or the detail as it is."""
    if isinstance(exc.detail, list):
        return "; ".join(str(issue.get("msg", issue)) for issue in exc.detail)
    return str(exc.detail)


class UiRoute(APIRoute):
    """Answers errors as pages: no session → the login form; a domain error or a malformed
    id → an HTML error page with the same status the API would give."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return login_redirect(request)
            except HookstreamError as exc:
                response = render(
                    request, "error.html", status_code=exc.status_code, detail=describe(exc)
                )
                response.headers.update(exc.headers)  # Retry-After on a 429, for one
                return response
            except RequestValidationError:
                return render(request, "error.html", status_code=404, detail="no such page")

        return guarded
