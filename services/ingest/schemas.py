"""Request and response bodies of the HTTP API (design §4)."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from shared.filters import FilterError, compile_filter
from shared.webhook_headers import is_reserved


def _storable(value: str) -> str:
    """PostgreSQL text takes neither NUL nor lone surrogates (they would be a 500 later)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


# Event type names travel in a Kafka header and are matched against the x-webhook-event
# request header, so they are printable ASCII without spaces; 200 characters is far beyond
# any real name ("invoice.payment_failed" is 22).
EVENT_TYPE_PATTERN = r"^[!-~]+$"
EventType = Annotated[str, Field(min_length=1, max_length=200, pattern=EVENT_TYPE_PATTERN)]
# The hard ceiling of the schema; the effective limit is HOOKSTREAM_MAX_URL_LENGTH,
# checked in the service because it is a setting.
TargetUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=65536,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+",
        examples=["https://example.com/hook"],
        description="an absolute http or https URL, at most HOOKSTREAM_MAX_URL_LENGTH long",
    ),
    AfterValidator(_storable),
]
SecretKey = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_storable)]

MAX_EVENT_TYPES = 100
# JSON documents stored in jsonb (filters, metadata) nest at most this deep.
MAX_JSON_DEPTH = 16


def storable_json(value: Any, max_depth: int = MAX_JSON_DEPTH, depth: int = 0) -> None:
    """What PostgreSQL's jsonb stores and every JSON client reads back: no NUL or lone
    surrogate in a string or key, finite numbers, bounded nesting (checked before it can
    recurse deep). Raises ValueError."""
    if depth > max_depth:
        raise ValueError(f"must nest at most {max_depth} levels")
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or Infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            storable_json(item, max_depth, depth + 1)
    elif isinstance(value, list):
        for item in value:
            storable_json(item, max_depth, depth + 1)


MAX_HEADERS = 20
MAX_HEADER_VALUE = 1024
# An HTTP token (RFC 9110): what a header name may be.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _custom_headers(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, text in value.items():
        lower = name.lower()
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if is_reserved(name):
            raise ValueError(f"{name!r} is set by Hookstream and cannot be replaced")
        if lower in seen:
            raise ValueError(f"{name!r} is given twice (names are case-insensitive)")
        seen.add(lower)
        if len(text) > MAX_HEADER_VALUE:
            raise ValueError(f"the value of {name!r} is longer than {MAX_HEADER_VALUE}")
        if not all(" " <= ch <= "~" or ch == "\t" for ch in text):
            raise ValueError(f"the value of {name!r} must be printable ASCII")
    return value


RateLimit = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=100_000,
        description="deliveries per second that may start (the burst is the rate); jobs "
        "over it wait, and are neither attempts nor failures; null: no limit",
    ),
]
CustomHeaders = Annotated[
    dict[str, str],
    AfterValidator(_custom_headers),
    Field(
        description=f"headers sent with every delivery, name → value (at most {MAX_HEADERS}; "
        "names Hookstream sets itself are refused)",
        examples=[{"Authorization": "Bearer receiver-token", "X-Team": "billing"}],
    ),
]


def _compiles(value: dict[str, Any]) -> dict[str, Any]:
    storable_json(value)
    try:
        compile_filter(value)
    except FilterError as exc:
        raise ValueError(str(exc)) from None
    return value


BodyFilter = Annotated[
    dict[str, Any],
    AfterValidator(_compiles),
    Field(
        description="JSON conditions on the body: dotted paths to a literal or to "
        "$eq $ne $gt $gte $lt $lte $in $nin $exists, and $or/$and lists; at most "
        "50 conditions, 5 levels, 4 KiB. A body that does not match is not delivered.",
        examples=[{"data.amount": {"$gte": 100}, "data.currency": {"$in": ["EUR", "USD"]}}],
    ),
]


RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339_text(value: Any) -> Any:
    """RFC 3339 text only: pydantic alone would take ``0.5`` (or ``"0.5"``) as a Unix time."""
    if value is not None and not (isinstance(value, str) and RFC3339.fullmatch(value)):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-04T10:00:00Z")
    return value


# A moment in a query or a body: RFC 3339 with an offset, nothing else.
Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- subscriptions ------------------------------------------------------------------


class SubscriptionCreate(_Strict):
    target_url: TargetUrl
    secret_key: SecretKey | None = Field(
        None, description="HMAC secret for signatures; null = no signing or verification"
    )
    event_types: list[EventType] = Field(
        default_factory=list,
        max_length=MAX_EVENT_TYPES,
        description="event types to deliver; empty = every type",
    )
    is_active: StrictBool = True
    filter: BodyFilter | None = None
    headers: CustomHeaders | None = None
    rate_limit: RateLimit | None = None
    ordered: StrictBool = Field(
        False,
        description="deliver one at a time, in the order the events were accepted: a "
        "delivery waits until every earlier one succeeded or failed for good; each "
        "carries `webhook-sequence`",
    )


class SubscriptionUpdate(_Strict):
    """Only the fields present are changed. ``null`` removes ``secret_key``, ``filter``,
    ``headers`` and ``rate_limit``."""

    target_url: TargetUrl | None = None
    secret_key: SecretKey | None = None
    event_types: list[EventType] | None = Field(None, max_length=MAX_EVENT_TYPES)
    is_active: StrictBool | None = None
    filter: BodyFilter | None = None
    headers: CustomHeaders | None = None
    rate_limit: RateLimit | None = None
    ordered: StrictBool | None = None


MAX_OVERLAP_SECONDS = 7 * 86400


class SecretRotate(_Strict):
    secret_key: SecretKey | None = Field(
        None, description="the new secret; absent: `whsec_` + base64 of 32 random bytes"
    )
    overlap_seconds: StrictInt = Field(
        86400,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="how long the previous secret still signs (a second `v1,` signature "
        "in webhook-signature) and verifies ingest's x-hub-signature-256",
    )


class SubscriptionOut(BaseModel):
    """A subscription as list/get show it: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    application_id: uuid.UUID
    target_url: str
    event_types: list[str]
    is_active: bool
    filter: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    rate_limit: int | None = None
    ordered: bool = False
    secret_rotated_at: datetime | None = None
    previous_secret_expires_at: datetime | None = Field(
        None, description="until then the previous secret signs and verifies too"
    )
    deactivated_reason: str | None = Field(
        None, description="why the service deactivated it (410 Gone, failing every delivery)"
    )
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(SubscriptionOut):
    """The create response: the only answer that ever contains ``secret_key``."""

    secret_key: str | None


# --- ingestion ----------------------------------------------------------------------


class Accepted(BaseModel):
    status: Literal["accepted"]
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    message: str


class Filtered(BaseModel):
    status: Literal["filtered"]
    reason: Literal["subscription_inactive", "event_type_not_subscribed", "filter_not_matched"]
    message: str


class TestEventRequest(_Strict):
    event_type: EventType = Field(
        "hookstream.test", description="the type the example event carries"
    )


class TestEventAccepted(BaseModel):
    status: Literal["accepted"]
    event_id: uuid.UUID
    delivery_id: uuid.UUID = Field(description="= the webhook-id the target will see")
    event_type: str
    message: str


class EventAccepted(BaseModel):
    status: Literal["accepted"]
    event_id: uuid.UUID
    message: str


# --- status -------------------------------------------------------------------------


class AttemptOut(BaseModel):
    """One delivery attempt (the original service's ``webhook_logs`` row)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    target_url: str
    event_type: str
    attempt_number: int
    status_code: int | None
    status: Literal["SUCCESS", "FAILED_ATTEMPT", "FAILURE"]
    error_details: str | None
    duration_ms: int | None
    response_excerpt: str | None
    trigger: str
    created_at: datetime


class DeliveryStatus(BaseModel):
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    total_attempts: int
    latest_status: Literal["SUCCESS", "FAILED_ATTEMPT", "FAILURE"]
    latest_attempt: AttemptOut
    logs: list[AttemptOut] = Field(description="every attempt, oldest first")


class SubscriptionDeliveries(BaseModel):
    subscription_id: uuid.UUID
    total_attempts: int
    successful_deliveries: int = Field(description="attempts with status SUCCESS")
    failed_deliveries: int = Field(description="deliveries that ended FAILURE (retries exhausted)")
    failed_attempts: int = Field(description="attempts with status FAILED_ATTEMPT (retried)")
    recent_logs: list[AttemptOut] = Field(description="latest attempts, newest first")


class EventDelivery(BaseModel):
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    total_attempts: int
    latest_status: Literal["SUCCESS", "FAILED_ATTEMPT", "FAILURE"]
    latest_attempt_at: datetime


class EventStatus(BaseModel):
    event_id: uuid.UUID
    event_type: str | None = Field(description="null when the event row has expired")
    subscription_id: uuid.UUID | None = Field(description="set for targeted ingests")
    received_at: datetime | None
    content_type: str | None
    size_bytes: int | None
    deliveries: list[EventDelivery]


# --- tools --------------------------------------------------------------------------


class SignatureRequest(_Strict):
    payload: dict[str, Any] = Field(examples=[{"event": "order.created", "id": 42}])
    secret_key: SecretKey


class SignatureOut(BaseModel):
    x_hub_signature_256: str = Field(examples=["sha256=" + "0" * 64])
    signed_body: str = Field(description="the exact string that was signed: json.dumps(payload)")


# --- redelivery and dead letters ----------------------------------------------------


class RedeliveryAccepted(BaseModel):
    status: Literal["accepted"]
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    trigger: Literal["manual-retry"]
    message: str


class ReplayAccepted(BaseModel):
    status: Literal["accepted"]
    subscription_id: uuid.UUID
    since: datetime
    replayed: int = Field(description="FAILURE deliveries published again (trigger=replay)")
    expired: int = Field(description="FAILURE deliveries whose event body is past retention")
    delivery_ids: list[uuid.UUID]
    message: str


class DeadLetter(BaseModel):
    """A delivery whose latest attempt ended it with FAILURE."""

    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    target_url: str
    attempts: int = Field(description="attempt number of the final attempt in its series")
    last_status_code: int | None
    last_error: str | None
    trigger: str
    failed_at: datetime


class DeadLetters(BaseModel):
    count: int
    items: list[DeadLetter] = Field(description="newest first")
