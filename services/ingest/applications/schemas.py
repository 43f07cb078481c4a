"""Request and response bodies of the application and API-key routes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from services.ingest.schemas import _storable, storable_json

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 16


def _path_safe(value: str) -> str:
    """``{app}`` in a path is an id or a uid: a uid that parses as an id would be
    ambiguous, and ``.`` or ``..`` are path segments that clients rewrite away."""
    if set(value) == {"."}:
        raise ValueError("must not be only dots (a URL path would drop it)")
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("must not be a UUID (a path would read it as an application id)")


def _text_only(value: Any) -> Any:
    """A date-time as text only: pydantic would take a bare number as a Unix time."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


def _small(value: dict[str, Any]) -> dict[str, Any]:
    storable_json(value, MAX_METADATA_DEPTH)
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


UID_PATTERN = r"^[A-Za-z0-9_.-]+$"
Uid = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=UID_PATTERN,
        description="your own id for this application (e.g. your customer's id); unique",
        examples=["customer-42"],
    ),
    AfterValidator(_path_safe),
]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Metadata = Annotated[
    dict[str, Any],
    Field(description=f"any JSON object, at most {MAX_METADATA_BYTES} bytes"),
    AfterValidator(_small),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApplicationCreate(_Strict):
    uid: Uid | None = None
    name: Name
    metadata: Metadata = Field(default_factory=dict)


class ApplicationUpdate(_Strict):
    """Only the fields present change; ``uid: null`` removes the uid."""

    uid: Uid | None = None
    name: Name | None = None
    metadata: Metadata | None = None


class ApplicationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    id: uuid.UUID
    uid: str | None
    name: str
    metadata: dict[str, Any] = Field(validation_alias="metadata_")
    created_at: datetime
    updated_at: datetime


class ApiKeyCreate(_Strict):
    name: Name
    expires_at: Annotated[AwareDatetime, BeforeValidator(_text_only)] | None = Field(
        None, description="RFC 3339 date-time with offset; absent: the key does not expire"
    )


class ApiKeyOut(BaseModel):
    """A key as lists show it: never the key itself."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    application_id: uuid.UUID
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="to within a minute")


class ApiKeyCreated(ApiKeyOut):
    """The create answer: the only one that ever contains the key."""

    key: str = Field(description="`hsk_…`: shown once, stored only as a hash")
