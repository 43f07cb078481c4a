"""The dashboard's forms (POST): each checks its CSRF token, calls the same service
function as the API route, and answers with a redirect (or the form again, with errors)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from services.ingest.applications import service as applications
from services.ingest.applications.schemas import ApplicationCreate
from services.ingest.errors import Conflict, HookstreamError, NotFound, Unprocessable
from services.ingest.redelivery import replay_failures, retry_delivery
from services.ingest.resources import from_request
from services.ingest.schemas import SecretRotate, SubscriptionCreate, SubscriptionUpdate
from services.ingest.status import delivery_status
from services.ingest.subscriptions import (
    announce_change,
    create_subscription,
    get_subscription,
    rotate_secret,
    update_subscription,
)
from services.ingest.tenancy import Tenant, operator, resolve_application
from services.ingest.test_events import send_test_event
from services.ingest.ui.forms import CONTROLS, event_types, field_errors, read_controls
from services.ingest.ui.pages import (
    REPLAY_WINDOWS_HOURS,
    AppRef,
    application_form,
    delivery_page_response,
    subscription_form,
)
from services.ingest.ui.web import (
    PREFIX,
    LoggedIn,
    UiRoute,
    describe,
    read_form,
    redirect,
    render,
)
from shared.logging import get_logger
from shared.models import DEFAULT_APPLICATION_ID

log = get_logger("ingest.ui")

router = APIRouter(route_class=UiRoute, include_in_schema=False)


def _metadata(text: str) -> Any:
    """The metadata field as JSON (empty: none); the schema then says whether it is an object.

    Refused here, as a field error, is what would otherwise fail later as a 500: nesting
    deeper than orjson writes (254 levels: the schema's size check is a TypeError then),
    and NUL characters, which PostgreSQL's jsonb does not take.
    """
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(["metadata"], f"is not valid JSON: {exc}") from None
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise Unprocessable(["metadata"], f"cannot be stored: {exc}") from None
    if _has_nul(value):
        raise Unprocessable(["metadata"], "must not contain NUL characters (\\u0000)")
    return value


def _has_nul(value: Any) -> bool:
    """Whether any string in parsed JSON, key or value, holds a NUL (without recursion:
    the parser allows 1024 levels, more than Python's stack)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


@router.post(f"{PREFIX}/subscriptions")
async def create(request: Request, session: LoggedIn) -> Response:
    form = await read_form(request, session)
    res = from_request(request)
    values = {k: form.get(k, "") for k in ("target_url", "event_types", *CONTROLS)}
    try:
        data = SubscriptionCreate(
            target_url=values["target_url"].strip(),
            secret_key=form.get("secret_key") or None,
            event_types=event_types(values["event_types"]),
            **read_controls(form),
        )
        async with res.sessions.begin() as db:
            sub = await create_subscription(
                db,
                data,
                application_id=DEFAULT_APPLICATION_ID,
                max_url_length=res.settings.max_url_length,
            )
    except (ValidationError, Unprocessable) as exc:
        return subscription_form(
            request, None, values=values, errors=field_errors(exc), status_code=422
        )
    await announce_change(res, sub.id)
    log.info("subscription created", subscription_id=str(sub.id), via="dashboard")
    return redirect(f"{PREFIX}/subscriptions/{sub.id}?notice=created")


@router.post(f"{PREFIX}/subscriptions/{{subscription_id}}")
async def update(subscription_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    form = await read_form(request, session)
    res = from_request(request)
    values = {k: form.get(k, "") for k in ("target_url", "event_types", *CONTROLS)}
    fields: dict[str, Any] = {
        "target_url": values["target_url"].strip(),
        "event_types": event_types(values["event_types"]),
    }
    # An empty secret field keeps the secret (it is never shown, so it cannot be edited).
    if form.get("remove_secret"):
        fields["secret_key"] = None
    elif form.get("secret_key"):
        fields["secret_key"] = form["secret_key"]
    try:
        patch = SubscriptionUpdate(**fields, **read_controls(form))
        async with res.sessions.begin() as db:
            await update_subscription(
                db, subscription_id, patch, max_url_length=res.settings.max_url_length
            )
    except (ValidationError, Unprocessable) as exc:
        async with res.sessions() as db:
            sub = await get_subscription(db, subscription_id)
        return subscription_form(
            request, sub, values=values, errors=field_errors(exc), status_code=422
        )
    await announce_change(res, subscription_id)
    log.info("subscription updated", subscription_id=str(subscription_id), via="dashboard")
    return redirect(f"{PREFIX}/subscriptions/{subscription_id}?notice=updated")


@router.post(f"{PREFIX}/subscriptions/{{subscription_id}}/active")
async def set_active(subscription_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    form = await read_form(request, session)
    res = from_request(request)
    active = form.get("active") == "true"
    async with res.sessions.begin() as db:
        await update_subscription(
            db,
            subscription_id,
            SubscriptionUpdate(is_active=active),
            max_url_length=res.settings.max_url_length,
        )
    await announce_change(res, subscription_id)
    log.info("subscription updated", subscription_id=str(subscription_id), is_active=active)
    notice = "activated" if active else "deactivated"
    return redirect(f"{PREFIX}/subscriptions/{subscription_id}?notice={notice}")


@router.post(f"{PREFIX}/subscriptions/{{subscription_id}}/secret")
async def new_secret(subscription_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    await read_form(request, session)
    res = from_request(request)
    # The previous secret keeps signing for the API's default overlap (a day).
    async with res.sessions.begin() as db:
        sub, secret = await rotate_secret(db, subscription_id, SecretRotate())
    await announce_change(res, subscription_id)
    log.info("subscription secret rotated", subscription_id=str(subscription_id), via="dashboard")
    return render(request, "secret.html", sub=sub, secret=secret)


@router.post(f"{PREFIX}/subscriptions/{{subscription_id}}/test")
async def send_test(subscription_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    await read_form(request, session)
    res = from_request(request)
    _, delivery_id = await send_test_event(res, operator(res.sessions), subscription_id)
    log.info(
        "test event sent",
        subscription_id=str(subscription_id),
        delivery_id=str(delivery_id),
        via="dashboard",
    )
    return redirect(f"{PREFIX}/subscriptions/{subscription_id}?notice=test-sent")


@router.post(f"{PREFIX}/subscriptions/{{subscription_id}}/replay")
async def replay(subscription_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    form = await read_form(request, session)
    try:
        hours = int(form.get("since_hours", ""))
    except ValueError:
        hours = 0
    if hours not in REPLAY_WINDOWS_HOURS:
        raise Unprocessable(["form", "since_hours"], "pick one of the offered windows")
    since = datetime.now(UTC) - timedelta(hours=hours)
    res = from_request(request)
    replayed, expired = await replay_failures(res, operator(res.sessions), subscription_id, since)
    log.info(
        "replay", subscription_id=str(subscription_id), replayed=len(replayed), via="dashboard"
    )
    return redirect(
        f"{PREFIX}/dlq?subscription_id={subscription_id}"
        f"&notice=replayed&n={len(replayed)}&expired={expired}"
    )


@router.post(f"{PREFIX}/deliveries/{{delivery_id}}/retry")
async def retry(delivery_id: uuid.UUID, request: Request, session: LoggedIn) -> Response:
    await read_form(request, session)
    res = from_request(request)
    async with res.sessions() as db:
        # How many attempts there are now: the page refreshes itself until there are more.
        seen = (await delivery_status(db, delivery_id)).total_attempts
    try:
        await retry_delivery(res, operator(res.sessions), delivery_id)
    except HookstreamError as exc:
        # Still retrying, inactive, or past retention: say so on the delivery's own page.
        return await delivery_page_response(
            request, delivery_id, error=describe(exc), status_code=exc.status_code
        )
    log.info("manual retry", delivery_id=str(delivery_id), via="dashboard")
    return redirect(f"{PREFIX}/deliveries/{delivery_id}?notice=retry-queued&seen={seen}")


@router.post(f"{PREFIX}/applications")
async def create_application(request: Request, session: LoggedIn) -> Response:
    form = await read_form(request, session)
    res = from_request(request)
    values = {k: form.get(k, "") for k in ("uid", "name", "metadata")}
    try:
        data = ApplicationCreate(
            uid=values["uid"].strip() or None,
            name=values["name"].strip(),
            metadata=_metadata(values["metadata"]),
        )
        async with operator(res.sessions).begin() as db:
            app = await applications.create_application(db, data)
    except (ValidationError, Unprocessable) as exc:
        return application_form(request, values=values, errors=field_errors(exc), status_code=422)
    except Conflict as exc:  # the uid is taken
        return application_form(
            request, values=values, errors={"uid": describe(exc)}, status_code=exc.status_code
        )
    log.info("application created", application_id=str(app.id), via="dashboard")
    return redirect(f"{PREFIX}/applications/{app.id}?notice=application-created")


@router.post(f"{PREFIX}/applications/{{app}}/api-keys/{{key_id}}/revoke")
async def revoke_key(
    app: AppRef, key_id: uuid.UUID, request: Request, session: LoggedIn
) -> Response:
    await read_form(request, session)
    res = from_request(request)
    async with res.sessions() as db:
        found = await resolve_application(db, app)
    # In the application's own session: a key of another application is not found.
    async with Tenant(res.sessions, found.id, operator=True).begin() as db:
        if not await applications.revoke_key(db, key_id):
            raise NotFound("api key not found (or already revoked)")
    log.info("api key revoked", key_id=str(key_id), application_id=str(found.id), via="dashboard")
    return redirect(f"{PREFIX}/applications/{found.id}?notice=key-revoked")
