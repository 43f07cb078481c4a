"""Record codecs for every topic (design §2).

Bodies travel as the exact bytes received and are never re-serialised; everything else
rides in headers so a consumer can route a record without parsing its body.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Self

from shared.models import DEFAULT_APPLICATION_ID

Headers = list[tuple[str, bytes]]

# Test events (services/ingest/test_events.py): their default type, and the trigger their
# records and attempts carry. A targeted record with this trigger reaches its subscription
# whatever its event types and filter say; only ingest's own code sets a trigger.
TEST_EVENT_TYPE = "hookstream.test"
TEST_TRIGGER = "test"
# Jobs a backfill publishes (services/janitor/backfill.py) and the attempts they make.
BACKFILL_TRIGGER = "backfill"


class RecordError(ValueError):
    """A record whose headers cannot be decoded (poison message)."""


def delivery_id_for(event_id: uuid.UUID, subscription_id: uuid.UUID) -> uuid.UUID:
    """Deterministic: re-running fan-out after a crash yields the same ids (design §3)."""
    return uuid.uuid5(event_id, str(subscription_id))


def _headers_dict(headers: Iterable[tuple[str, bytes]]) -> dict[str, bytes]:
    return dict(headers)


def _req(h: dict[str, bytes], name: str) -> str:
    try:
        return h[name].decode()
    except KeyError:
        raise RecordError(f"missing header {name!r}") from None
    except UnicodeDecodeError:
        raise RecordError(f"header {name!r} is not UTF-8") from None


def _uuid(h: dict[str, bytes], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(_req(h, name))
    except ValueError:
        raise RecordError(f"header {name!r} is not a UUID") from None


def _ts(h: dict[str, bytes], name: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(_req(h, name)), UTC)
    except ValueError:
        raise RecordError(f"header {name!r} is not a timestamp") from None


def _ts_bytes(value: datetime) -> bytes:
    return repr(value.timestamp()).encode()


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A webhook as ingested, on ``<prefix>.events``.

    Targeted (``POST /ingest/{id}``) records carry ``subscription_id`` and are keyed by
    it; fan-out (``POST /events``, ``POST /applications/{app}/events``) records have none
    and are keyed by application id, so that one application's events keep the order the
    broker accepted them in (ordered delivery). Every record names its application; one without the
    header was published before applications existed and belongs to the default one.
    """

    event_id: uuid.UUID
    event_type: str
    received_at: datetime
    content_type: str
    body: bytes
    subscription_id: uuid.UUID | None = None
    application_id: uuid.UUID = DEFAULT_APPLICATION_ID
    # Who caused it: "ingest" for every webhook; "test" for a test event.
    trigger: str = "ingest"
    # Headers this codec does not know (a trace's ``traceparent``), carried through to the
    # jobs fan-out makes, as DeliveryJob.extra carries them across retries.
    extra: dict[str, bytes] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> bytes:
        return str(self.subscription_id or self.application_id).encode()

    def headers(self) -> Headers:
        h: Headers = [
            ("event_id", str(self.event_id).encode()),
            ("event_type", self.event_type.encode()),
            ("received_at", _ts_bytes(self.received_at)),
            ("content_type", self.content_type.encode()),
            ("application_id", str(self.application_id).encode()),
        ]
        if self.subscription_id is not None:
            h.append(("subscription_id", str(self.subscription_id).encode()))
        if self.trigger != "ingest":
            h.append(("trigger", self.trigger.encode()))
        h.extend(self.extra.items())
        return h

    @classmethod
    def decode(cls, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Self:
        h = _headers_dict(headers)
        return cls(
            event_id=_uuid(h, "event_id"),
            event_type=_req(h, "event_type"),
            received_at=_ts(h, "received_at"),
            content_type=_req(h, "content_type"),
            body=value or b"",
            subscription_id=_uuid(h, "subscription_id") if "subscription_id" in h else None,
            application_id=_application(h),
            trigger=h.get("trigger", b"ingest").decode(errors="replace"),
            extra={k: v for k, v in h.items() if k not in _EVENT_HEADERS},
        )


_EVENT_HEADERS = frozenset(
    {"event_id", "event_type", "received_at", "content_type", "application_id",
     "subscription_id", "trigger"}
)  # fmt: skip


def _application(h: dict[str, bytes]) -> uuid.UUID:
    return _uuid(h, "application_id") if "application_id" in h else DEFAULT_APPLICATION_ID


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """One delivery of one event to one subscription, on deliveries/retry/dlq topics."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    event_type: str
    attempt: int
    first_received_at: datetime
    content_type: str
    body: bytes
    trigger: str = "ingest"
    due_at: datetime | None = None
    last_error: str | None = None
    application_id: uuid.UUID = DEFAULT_APPLICATION_ID
    extra: dict[str, bytes] = field(default_factory=dict, compare=False)
    # An ordered subscription's sequence number (``webhook-sequence``). Set by the
    # dispatcher from its queue (services/dispatcher/ordered.py), never carried in a record.
    sequence: int | None = field(default=None, compare=False)
    # Which run of the delivery this is: "" for the one its event started, an id for a
    # manual retry, a replay or a backfill. Its retries carry it on, and copies of a retry
    # claim their attempt within their run (services/dispatcher/claims.py).
    run: str = ""

    @classmethod
    def for_event(cls, event: EventRecord, subscription_id: uuid.UUID) -> Self:
        return cls(
            application_id=event.application_id,
            trigger=event.trigger,
            delivery_id=delivery_id_for(event.event_id, subscription_id),
            event_id=event.event_id,
            subscription_id=subscription_id,
            event_type=event.event_type,
            attempt=1,
            first_received_at=event.received_at,
            content_type=event.content_type,
            body=event.body,
            extra=dict(event.extra),
        )

    def log_fields(self) -> dict[str, str | int]:
        """The ids a log line about this job carries (never its body)."""
        return {
            "delivery_id": str(self.delivery_id),
            "event_id": str(self.event_id),
            "subscription_id": str(self.subscription_id),
            "application_id": str(self.application_id),
            "attempt": self.attempt,
        }

    @property
    def key(self) -> bytes:
        return str(self.subscription_id).encode()

    def next_attempt(self, due_at: datetime, last_error: str | None) -> DeliveryJob:
        return replace(self, attempt=self.attempt + 1, due_at=due_at, last_error=last_error)

    def headers(self) -> Headers:
        h: Headers = [
            ("delivery_id", str(self.delivery_id).encode()),
            ("event_id", str(self.event_id).encode()),
            ("subscription_id", str(self.subscription_id).encode()),
            ("event_type", self.event_type.encode()),
            ("attempt", str(self.attempt).encode()),
            ("first_received_at", _ts_bytes(self.first_received_at)),
            ("content_type", self.content_type.encode()),
            ("trigger", self.trigger.encode()),
            ("application_id", str(self.application_id).encode()),
        ]
        if self.due_at is not None:
            h.append(("due_at", _ts_bytes(self.due_at)))
        if self.last_error is not None:
            # Headers are not for payloads: keep the error short.
            h.append(("last_error", self.last_error[:500].encode()))
        if self.run:
            h.append(("run", self.run.encode()))
        h.extend(self.extra.items())
        return h

    @classmethod
    def decode(cls, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Self:
        h = _headers_dict(headers)
        known = {
            "delivery_id", "event_id", "subscription_id", "event_type", "attempt",
            "first_received_at", "content_type", "trigger", "due_at", "last_error",
            "application_id", "run",
        }  # fmt: skip
        try:
            attempt = int(_req(h, "attempt"))
        except ValueError:
            raise RecordError("header 'attempt' is not an integer") from None
        return cls(
            delivery_id=_uuid(h, "delivery_id"),
            event_id=_uuid(h, "event_id"),
            subscription_id=_uuid(h, "subscription_id"),
            event_type=_req(h, "event_type"),
            attempt=attempt,
            first_received_at=_ts(h, "first_received_at"),
            content_type=h.get("content_type", b"application/json").decode(errors="replace"),
            body=value or b"",
            trigger=h.get("trigger", b"ingest").decode(errors="replace"),
            due_at=_ts(h, "due_at") if "due_at" in h else None,
            last_error=h["last_error"].decode(errors="replace") if "last_error" in h else None,
            application_id=_application(h),
            run=h["run"].decode(errors="replace") if "run" in h else "",
            extra={k: v for k, v in h.items() if k not in known},
        )
