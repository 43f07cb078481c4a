"""``POST /subscriptions/{id}/backfill``, ``GET /backfills/{id}``, ``DELETE /backfills/{id}``."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from services.ingest.backfills.schemas import BackfillCreate, BackfillOut
from services.ingest.backfills.service import cancel_backfill, get_backfill, start_backfill
from services.ingest.errors import error_responses
from services.ingest.resources import from_request
from services.ingest.tenancy import Caller
from shared.logging import get_logger
from shared.models import Backfill

log = get_logger("ingest.backfills")

router = APIRouter(tags=["backfills"])


def _out(backfill: Backfill) -> BackfillOut:
    return BackfillOut(
        id=backfill.id,
        backfill_id=backfill.id,
        subscription_id=backfill.subscription_id,
        application_id=backfill.application_id,
        status=backfill.status,
        since=backfill.since,
        until=backfill.until,
        scanned=backfill.scanned,
        matched=backfill.matched,
        published=backfill.published,
        error=backfill.error,
        created_at=backfill.created_at,
        updated_at=backfill.updated_at,
        finished_at=backfill.finished_at,
    )


@router.post(
    "/subscriptions/{subscription_id}/backfill",
    status_code=202,
    response_model=BackfillOut,
    summary="Deliver to this subscription the events of a past window that it takes "
    "(trigger backfill); deliveries that already succeeded are not sent again",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
async def create(
    subscription_id: uuid.UUID, data: BackfillCreate, tenant: Caller, request: Request
) -> BackfillOut:
    backfill = await start_backfill(from_request(request), tenant, subscription_id, data)
    log.info(
        "backfill requested",
        backfill_id=str(backfill.id),
        subscription_id=str(subscription_id),
        since=backfill.since.isoformat(),
        until=backfill.until.isoformat(),
        **tenant.log_fields(),
    )
    return _out(backfill)


@router.get(
    "/backfills/{backfill_id}",
    response_model=BackfillOut,
    summary="A backfill's state and progress",
    responses=error_responses(401, 404, 422),
)
async def read(backfill_id: uuid.UUID, tenant: Caller) -> BackfillOut:
    async with tenant.session() as session:
        return _out(await get_backfill(session, backfill_id))


@router.delete(
    "/backfills/{backfill_id}",
    response_model=BackfillOut,
    summary="Cancel a running backfill (it stops within about a second); a finished one "
    "is left as it is",
    responses=error_responses(401, 404, 422),
)
async def cancel(backfill_id: uuid.UUID, tenant: Caller) -> BackfillOut:
    backfill = await cancel_backfill(tenant, backfill_id)
    fields = tenant.log_fields()
    log.info("backfill cancel", backfill_id=str(backfill_id), status=backfill.status, **fields)
    return _out(backfill)
