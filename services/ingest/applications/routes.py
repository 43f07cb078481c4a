"""``/applications``: tenants and their scoped API keys (operator key, or the app's own key).

Listing and creating applications, and deleting one, have no meaning inside one
application: an application's key gets 403 there. Everything under ``/applications/{app}``
goes through ``tenancy.in_application``, so another application is a 404 for a key.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from services.ingest.applications import service
from services.ingest.applications.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApplicationCreate,
    ApplicationOut,
    ApplicationUpdate,
)
from services.ingest.errors import NotFound, error_responses
from services.ingest.pagination import Cursor, Limit, Page, page
from services.ingest.resources import from_request
from services.ingest.subscriptions import announce_change
from services.ingest.tenancy import (
    AppTenant,
    OperatorTenant,
    Tenant,
    operator_only,
    resolve_application,
)
from shared.logging import get_logger
from shared.models import Application

log = get_logger("ingest.applications")

router = APIRouter(prefix="/applications", tags=["applications"])

_APP_ERRORS = error_responses(401, 404, 422)


@router.post(
    "",
    status_code=201,
    response_model=ApplicationOut,
    summary="Create an application (a tenant); a duplicate uid is a 409",
    responses=error_responses(400, 401, 403, 409, 422),
)
async def create(data: ApplicationCreate, tenant: OperatorTenant) -> Any:
    async with tenant.begin() as session:
        app = await service.create_application(session, data)
    log.info("application created", application_id=str(app.id))
    return app


@router.get(
    "",
    response_model=Page[ApplicationOut],
    summary="List applications, newest first (keyset pagination)",
    responses=error_responses(401, 403, 422),
)
async def list_(tenant: OperatorTenant, limit: Limit = 50, cursor: Cursor = None) -> Any:
    async with tenant.session() as session:
        rows = await service.list_applications(session, cursor, limit)
    return page(rows, limit, ApplicationOut.model_validate)


@router.get(
    "/{app}",
    response_model=ApplicationOut,
    summary="One application, by id or uid",
    responses=_APP_ERRORS,
)
async def get(tenant: AppTenant) -> Any:
    async with tenant.session() as session:
        return await _application(session, tenant)


@router.patch(
    "/{app}",
    response_model=ApplicationOut,
    summary="Change an application's uid, name or metadata",
    responses=error_responses(400, 401, 404, 409, 422),
)
async def update(patch: ApplicationUpdate, tenant: AppTenant) -> Any:
    async with tenant.begin() as session:
        app = await service.update_application(session, await _application(session, tenant), patch)
    log.info(
        "application updated", application_id=str(app.id), fields=sorted(patch.model_fields_set)
    )
    return app


@router.delete(
    "/{app}",
    status_code=204,
    response_class=Response,
    summary="Delete an application: its subscriptions are deactivated, its keys revoked; "
    "the operator can still read its history",
    responses=error_responses(401, 403, 404, 409, 422),
)
async def remove(tenant: AppTenant, request: Request) -> Response:
    await operator_only(tenant)  # after {app} resolved: another app's key saw a 404
    async with tenant.begin() as session:
        await service.delete_application(session, await _application(session, tenant))
    await announce_change(from_request(request), tenant.creates_in)
    log.info("application deleted", application_id=str(tenant.application_id))
    return Response(status_code=204)


# --- keys ---------------------------------------------------------------------------


@router.post(
    "/{app}/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key scoped to this application (the only answer showing the key)",
    responses=error_responses(400, 401, 404, 422),
)
async def create_key(data: ApiKeyCreate, tenant: AppTenant) -> Any:
    async with tenant.begin() as session:
        row, key = await service.create_key(session, tenant.creates_in, data)
    log.info("api key created", key_id=str(row.id), **tenant.log_fields())
    return ApiKeyCreated(**ApiKeyOut.model_validate(row).model_dump(), key=key)


@router.get(
    "/{app}/api-keys",
    response_model=Page[ApiKeyOut],
    summary="This application's keys that are not revoked (never the keys themselves)",
    responses=_APP_ERRORS,
)
async def list_keys(tenant: AppTenant, limit: Limit = 50, cursor: Cursor = None) -> Any:
    async with tenant.session() as session:
        rows = await service.list_keys(session, cursor, limit)
    return page(rows, limit, ApiKeyOut.model_validate)


@router.delete(
    "/{app}/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke a key: every process refuses it within a second",
    responses=_APP_ERRORS,
)
async def revoke_key(key_id: uuid.UUID, tenant: AppTenant) -> Response:
    async with tenant.begin() as session:
        if not await service.revoke_key(session, key_id):
            raise NotFound("api key not found")
    log.info("api key revoked", key_id=str(key_id), **tenant.log_fields())
    return Response(status_code=204)


async def _application(session: AsyncSession, tenant: Tenant) -> Application:
    return await resolve_application(session, str(tenant.application_id))
