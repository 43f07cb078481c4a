"""Request and response bodies of the backfill routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _text_only(value: Any) -> Any:
    """A date-time as text only: pydantic would take a bare number as a Unix time."""
    if value is not None and not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class BackfillCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Moment = Field(
        description="RFC 3339 with an offset: the window starts here (included). Must not "
        "be older than the earliest event the log still holds (a 422 names it).",
        examples=["2026-12-01T00:00:00Z"],
    )
    until: Moment | None = Field(
        None,
        description="RFC 3339 with an offset: the window ends here (included); default now. "
        "Not in the future.",
    )


BackfillStatus = Literal["running", "done", "cancelled", "failed"]


class BackfillOut(BaseModel):
    id: uuid.UUID
    backfill_id: uuid.UUID = Field(description="= id")
    subscription_id: uuid.UUID
    application_id: uuid.UUID
    status: BackfillStatus = Field(
        description="running until every event of the window was read; then done, or "
        "cancelled (DELETE), or failed (see error)"
    )
    since: datetime
    until: datetime
    scanned: int = Field(description="events of the window read so far")
    matched: int = Field(description="of those, events the subscription takes")
    published: int = Field(
        description="of those, delivery jobs published (a delivery that already succeeded "
        "is not sent again)"
    )
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
