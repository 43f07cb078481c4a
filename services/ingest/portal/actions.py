"""The portal's forms (POST): each checks its CSRF token against the portal session, acts
through the session's tenant (another application's id is not found: a 404 page, and
nothing done), and answers with a redirect, the form again with its errors, or, once,
a new endpoint secret."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from services.ingest.errors import Conflict, HookstreamError, NotFound, Unprocessable
from services.ingest.portal.pages import delivery_page_response, endpoint_form
from services.ingest.portal.queries import parse_time
from services.ingest.portal.web import (
    PREFIX,
    Portal,
    PortalLoggedIn,
    PortalRoute,
    read_form,
    redirect,
    render,
)
from services.ingest.redelivery import replay_failures, retry_delivery
from services.ingest.resources import from_request
from services.ingest.schemas import SecretRotate, SubscriptionCreate, SubscriptionUpdate
from services.ingest.status import delivery_status
from services.ingest.subscriptions import (
    announce_change,
    create_subscription,
    delete_subscription,
    generate_secret,
    get_subscription,
    rotate_secret,
    update_subscription,
)
from services.ingest.test_events import send_test_event
from services.ingest.ui.forms import CONTROLS, event_types, field_errors, read_controls
from services.ingest.ui.web import describe
from shared.logging import get_logger
from shared.models import Subscription

log = get_logger("ingest.portal")

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

ENDPOINTS = f"{PREFIX}/endpoints"


@router.post(ENDPOINTS)
async def create(request: Request, portal: PortalLoggedIn) -> Response:
    form = await read_form(request, portal)
    res = from_request(request)
    values = {k: form.get(k, "") for k in ("target_url", "event_types", *CONTROLS)}
    secret = generate_secret()
    try:
        data = SubscriptionCreate(
            target_url=values["target_url"].strip(),
            secret_key=secret,
            event_types=event_types(values["event_types"]),
            **read_controls(form),
        )
        async with portal.tenant.begin() as db:
            sub = await create_subscription(
                db,
                data,
                application_id=portal.application.id,
                max_url_length=res.settings.max_url_length,
            )
    except (ValidationError, Unprocessable) as exc:
        return endpoint_form(
            request, None, values=values, errors=field_errors(exc), status_code=422
        )
    await announce_change(res, sub.id)
    log.info("endpoint created", subscription_id=str(sub.id), **_fields(portal))
    # The one answer that holds the secret: rendered here, never put in a URL or a later page.
    return render(request, "portal/secret.html", sub=sub, secret=secret, created=True)


@router.post(f"{ENDPOINTS}/{{subscription_id}}")
async def update(subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn) -> Response:
    form = await read_form(request, portal)
    res = from_request(request)
    async with portal.tenant.session() as db:
        sub = await get_subscription(db, subscription_id)
    values = {k: form.get(k, "") for k in ("target_url", "event_types", *CONTROLS)}
    try:
        patch = SubscriptionUpdate(
            target_url=values["target_url"].strip(),
            event_types=event_types(values["event_types"]),
            **read_controls(form),
        )
        async with portal.tenant.begin() as db:
            await update_subscription(
                db, subscription_id, patch, max_url_length=res.settings.max_url_length
            )
    except (ValidationError, Unprocessable) as exc:
        return endpoint_form(request, sub, values=values, errors=field_errors(exc), status_code=422)
    await announce_change(res, subscription_id)
    log.info("endpoint updated", subscription_id=str(subscription_id), **_fields(portal))
    return redirect(request, f"{ENDPOINTS}/{subscription_id}?notice=updated")


@router.post(f"{ENDPOINTS}/{{subscription_id}}/active")
async def set_active(
    subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn
) -> Response:
    form = await read_form(request, portal)
    res = from_request(request)
    active = form.get("active") == "true"
    async with portal.tenant.begin() as db:
        await update_subscription(
            db,
            subscription_id,
            SubscriptionUpdate(is_active=active),
            max_url_length=res.settings.max_url_length,
        )
    await announce_change(res, subscription_id)
    log.info(
        "endpoint updated",
        subscription_id=str(subscription_id),
        is_active=active,
        **_fields(portal),
    )
    notice = "enabled" if active else "disabled"
    return redirect(request, f"{ENDPOINTS}/{subscription_id}?notice={notice}")


@router.post(f"{ENDPOINTS}/{{subscription_id}}/secret")
async def new_secret(
    subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn
) -> Response:
    await read_form(request, portal)
    res = from_request(request)
    # The previous secret keeps signing for the API's default overlap (a day), so the
    # receiver can switch without dropping a delivery.
    async with portal.tenant.begin() as db:
        sub, secret = await rotate_secret(db, subscription_id, SecretRotate())
    await announce_change(res, subscription_id)
    log.info("endpoint secret rotated", subscription_id=str(subscription_id), **_fields(portal))
    return render(request, "portal/secret.html", sub=sub, secret=secret, created=False)


@router.post(f"{ENDPOINTS}/{{subscription_id}}/delete")
async def delete(subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn) -> Response:
    await read_form(request, portal)
    async with portal.tenant.begin() as db:
        await delete_subscription(db, subscription_id)
    await announce_change(from_request(request), subscription_id)
    log.info("endpoint deleted", subscription_id=str(subscription_id), **_fields(portal))
    return redirect(request, f"{PREFIX}?notice=deleted")


@router.post(f"{ENDPOINTS}/{{subscription_id}}/test")
async def send_test(
    subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn
) -> Response:
    await read_form(request, portal)
    _, delivery_id = await send_test_event(from_request(request), portal.tenant, subscription_id)
    log.info(
        "test event sent",
        subscription_id=str(subscription_id),
        delivery_id=str(delivery_id),
        **_fields(portal),
    )
    return redirect(
        request,
        f"{PREFIX}/deliveries?endpoint={subscription_id}&notice=test-sent&pending={delivery_id}",
    )


@router.post(f"{ENDPOINTS}/{{subscription_id}}/recover")
async def recover(subscription_id: uuid.UUID, request: Request, portal: PortalLoggedIn) -> Response:
    form = await read_form(request, portal)
    since = parse_time(form.get("since"), "since")
    if since is None:
        raise Unprocessable(["form", "since"], "say since when failed deliveries are sent again")
    async with portal.tenant.session() as db:
        _deliverable(await get_subscription(db, subscription_id))
    res = from_request(request)
    replayed, expired = await replay_failures(res, portal.tenant, subscription_id, since)
    log.info(
        "recover",
        subscription_id=str(subscription_id),
        replayed=len(replayed),
        **_fields(portal),
    )
    return redirect(
        request,
        f"{ENDPOINTS}/{subscription_id}?notice=recovered&n={len(replayed)}&expired={expired}",
    )


@router.post(f"{PREFIX}/deliveries/{{delivery_id}}/retry")
async def retry(delivery_id: uuid.UUID, request: Request, portal: PortalLoggedIn) -> Response:
    await read_form(request, portal)
    res = from_request(request)
    async with portal.tenant.session() as db:
        status = await delivery_status(db, delivery_id)
        sub = await db.get(Subscription, status.subscription_id)
    try:
        if sub is None:
            raise NotFound("this delivery's endpoint was deleted: there is nowhere to send it")
        _deliverable(sub)
        await retry_delivery(res, portal.tenant, delivery_id)
    except HookstreamError as exc:
        # Still retrying, endpoint disabled or deleted, or past retention: said on the
        # delivery's own page.
        return await delivery_page_response(
            request, portal, delivery_id, error=describe(exc), status_code=exc.status_code
        )
    log.info("manual retry", delivery_id=str(delivery_id), **_fields(portal))
    # The page refreshes itself until there are more attempts than now.
    seen = status.total_attempts
    return redirect(request, f"{PREFIX}/deliveries/{delivery_id}?notice=retry-queued&seen={seen}")


def _deliverable(sub: Subscription) -> None:
    """The service's own refusal speaks of the API (PATCH is_active); this one of the page."""
    if not sub.is_active:
        raise Conflict("this endpoint is disabled: enable it on its page first")


def _fields(portal: Portal) -> dict[str, str]:
    return {"application_id": str(portal.application.id), "via": "portal"}
