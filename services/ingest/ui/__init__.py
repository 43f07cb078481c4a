"""The dashboard at /ui: server-rendered pages over the same service layer as the API.

Login with the API key once (a server-side session, its token in an HttpOnly,
SameSite=Strict cookie; failed logins limited per address), CSRF tokens on every form,
Jinja2 with autoescaping, a strict Content Security Policy, inline SVG for the chart, and
one small static script: no build step, nothing from the internet.
"""

from fastapi import APIRouter

from services.ingest.ui import actions, login, pages
from services.ingest.ui.web import STATIC_DIR

router = APIRouter()
router.include_router(login.router)
router.include_router(pages.router)
router.include_router(actions.router)

__all__ = ["STATIC_DIR", "router"]
