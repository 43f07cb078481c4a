"""Rows of ``GET /status/events`` and ``GET /status/deliveries``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class EventRow(BaseModel):
    """An ingested event, without its body (``GET /status/events/{id}`` has the rest)."""

    event_id: uuid.UUID
    event_type: str
    application_id: uuid.UUID
    subscription_id: uuid.UUID | None = Field(description="set for targeted ingests")
    received_at: datetime
    content_type: str
    size_bytes: int


class DeliveryRow(BaseModel):
    """A delivery and its latest attempt (``GET /status/deliveries/{id}`` has every one)."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    application_id: uuid.UUID
    event_type: str
    target_url: str
    status: Literal["SUCCESS", "FAILED_ATTEMPT", "FAILURE"] = Field(
        description="of the latest attempt: SUCCESS, FAILED_ATTEMPT (still retrying) or "
        "FAILURE (retries exhausted)"
    )
    attempt_number: int = Field(description="of the latest attempt, in its series")
    status_code: int | None
    error_details: str | None
    duration_ms: int | None
    trigger: str
    latest_attempt_at: datetime
