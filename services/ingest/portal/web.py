"""The portal's plumbing: its session, its headers, rendering and errors as pages.

A portal session belongs to one application. Every portal route takes a ``Portal``
(``PortalLoggedIn``), whose ``tenant`` is the same ``Tenant`` a scoped API key gets: the
pages read and write through ``portal.tenant.session()``, so another application's
object is not found (404) by the mechanism that isolates the API (``tenancy.py``), not by
checks in the pages.

Pages share the dashboard's Jinja2 environment (autoescape, filters), templates and
static files. Their headers differ in one place: ``frame-ancestors`` comes from
``HOOKSTREAM_PORTAL_FRAME_ANCESTORS``, so an operator's own site can frame the portal;
unset, framing is refused as for ``/ui``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response

from services.ingest import websessions
from services.ingest.errors import BadRequest, HookstreamError, NotFound
from services.ingest.resources import from_request
from services.ingest.tenancy import Tenant, resolve_application
from services.ingest.ui.web import MAX_FORM_FIELDS, CsrfRejected, describe, templates
from shared.models import Application, WebSession

PREFIX = "/portal"
COOKIE = "hookstream_portal"
ENDED_PATH = f"{PREFIX}/ended"


def security_headers(frame_ancestors: str | None) -> dict[str, str]:
    ancestors = frame_ancestors or "'none'"
    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"form-action 'self'; frame-ancestors {ancestors}; base-uri 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    if frame_ancestors is None:
        # Older browsers without CSP level 2; an allow-list cannot be said this way.
        headers["X-Frame-Options"] = "DENY"
    return headers


def _headers(request: Request) -> dict[str, str]:
    return security_headers(from_request(request).settings.portal_frame_ancestors)


class SessionEnded(Exception):
    """No live portal session: the page says so (401) and shows nothing else."""


@dataclass(frozen=True, slots=True)
class Portal:
    """A request's portal session: its application, its tenant, its CSRF token."""

    session: WebSession
    application: Application
    tenant: Tenant

    @property
    def csrf(self) -> str:
        return self.session.csrf


async def require_portal(request: Request) -> Portal:
    res = from_request(request)
    now = datetime.now(UTC)
    row = await websessions.find_session(
        res.sessions, request.cookies.get(COOKIE), kind=websessions.PORTAL, now=now
    )
    if row is None or row.application_id is None:
        raise SessionEnded()
    tenant = Tenant(res.sessions, row.application_id, operator=False)
    async with tenant.session() as session:
        try:
            application = await resolve_application(session, str(row.application_id))
        except NotFound:
            raise SessionEnded() from None  # the application was deleted meanwhile
    portal = Portal(row, application, tenant)
    request.state.portal = portal
    return portal


PortalLoggedIn = Annotated[Portal, Depends(require_portal)]


def set_session_cookie(response: Response, request: Request, token: str, expires: datetime) -> None:
    framed = from_request(request).settings.portal_frame_ancestors is not None
    https = request.url.scheme == "https"
    response.set_cookie(
        COOKIE,
        token,
        expires=expires,
        path=PREFIX,
        httponly=True,
        # Lax: the link is opened from an email or another site, and the redirect that
        # follows must carry the cookie. Framed by another site over https, the cookie
        # is a third-party one and needs None (with Secure); CSRF tokens guard the forms.
        samesite="none" if framed and https else "lax",
        secure=https,
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True)


async def read_form(request: Request, portal: Portal) -> dict[str, str]:
    """The fields of an urlencoded form post, once its CSRF token matched the session's."""
    form: dict[str, str] = {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body = (await request.body()).decode("utf-8", "replace")
        try:
            fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise BadRequest("too many form fields") from None
        form = {name: values[0] for name, values in fields.items()}
    presented = form.get("csrf", "")
    if not presented or not hmac.compare_digest(presented.encode(), portal.csrf.encode()):
        raise CsrfRejected()
    return form


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> Response:
    portal: Portal | None = getattr(request.state, "portal", None)
    values = {
        "csrf": portal.csrf if portal else "",
        "application": portal.application if portal else None,
        "path": request.url.path,
        "prefix": PREFIX,
        **context,
    }
    html = templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code, headers=_headers(request))


def redirect(request: Request, url: str) -> Response:
    """303: after a form post the browser follows with a GET."""
    return RedirectResponse(url, status_code=303, headers=_headers(request))


def message(request: Request, status_code: int, title: str, detail: str) -> Response:
    """A page that says one thing (link refused, session ended, logged out)."""
    return render(
        request,
        "portal/message.html",
        status_code=status_code,
        title=title,
        detail=detail,
        failed=status_code >= 400,
    )


def session_ended(request: Request) -> Response:
    response = message(
        request,
        401,
        "Your portal session has ended",
        "Ask the service that sent you here for a new portal link.",
    )
    clear_session_cookie(response)
    return response


class PortalRoute(APIRoute):
    """Errors as pages: no session → 401 page; a domain error or a malformed id → an HTML
    page with the status the API would give (another application's id: 404)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SessionEnded:
                return session_ended(request)
            except HookstreamError as exc:
                response = message(request, exc.status_code, "Something is wrong", describe(exc))
                response.headers.update(exc.headers)
                return response
            except RequestValidationError:
                return message(request, 404, "Not found", "There is no such page.")

        return guarded
