"""The ingest core behind ``POST /ingest/{id}`` (signed, targeted) and ``POST /events`` (fan-out).

It decides (signature, filter, idempotency), publishes and answers; the HTTP edges
(ingest_endpoint.py, events.py) only decode and encode. The hot path does no database
query (subscriptions come from the in-process cache) and awaits nothing but the broker's
ack: the answer is 202 only once the record is on the topic (design §1). The record
carries the exact body bytes; ``delivery_id`` is fixed here as ``uuid5(event_id,
subscription_id)``, so the 202 names the ``webhook-id`` the target will see.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from services.ingest.errors import HookstreamError, InvalidSignature, NotFound
from services.ingest.idempotency import Claim, IdempotencyStore, StoredAnswer, fingerprint
from services.ingest.publishing import Publisher
from services.ingest.request_body import legacy_payload, parse_json
from shared.metrics import INGESTED
from shared.models import DEFAULT_APPLICATION_ID
from shared.records import EventRecord, delivery_id_for
from shared.settings import Settings
from shared.signing import verify_hub_signature
from shared.subscriptions import SubscriptionCache, SubscriptionView
from shared.topics import Topics

# A webhook without ``x-webhook-event`` gets this type: it reaches subscriptions that
# take every type, and is filtered for those that list theirs.
DEFAULT_EVENT_TYPE = "webhook"
MAX_CONTENT_TYPE = 255  # events.content_type is varchar(255)
MAX_EVENT_TYPE = 200
# Printable ASCII, space included (see ingest_endpoint._event_type).
EVENT_TYPE_PATTERN = r"^[ -~]+$"
MAX_IDEMPOTENCY_KEY = 255

Answer = tuple[int, bytes]

_OUTCOMES = {
    (route, outcome): INGESTED.labels(route, outcome)
    for route in ("ingest", "events")
    for outcome in ("accepted", "filtered", "rejected", "unavailable", "replayed")
}


def count_answer(route: str, answer: Answer, replayed: bool) -> None:
    outcome = "replayed" if replayed else "accepted" if answer[0] == 202 else "filtered"
    _OUTCOMES[route, outcome].inc()


def count_error(route: str, exc: HookstreamError) -> None:
    _OUTCOMES[route, "unavailable" if exc.status_code >= 500 else "rejected"].inc()


class Ingestion:
    """The ingest core: decide, publish, answer. Routes only decode and encode."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        cache: SubscriptionCache,
        publisher: Publisher,
        idempotency: IdempotencyStore,
    ) -> None:
        self.max_body_bytes = settings.max_body_bytes
        self.cache = cache
        self._events_topic = topics.events
        self._publisher = publisher
        self._idempotency = idempotency

    async def subscription(self, subscription_id: uuid.UUID) -> SubscriptionView:
        sub = await self.cache.get(subscription_id)
        if sub is None:
            raise NotFound("subscription not found")
        return sub

    async def targeted(
        self,
        sub: SubscriptionView,
        body: bytes,
        *,
        signature: str | None,
        event_type: str,
        content_type: str,
        idempotency_key: str | None,
    ) -> tuple[Answer, bool]:
        """``POST /ingest/{id}``: returns ((status, body), replayed)."""
        payload = parse_json(body)
        if sub.secret_key is not None and not any(
            _signed(secret, body, signature) for secret in sub.secrets(datetime.now(UTC))
        ):
            raise InvalidSignature()
        deliver = partial(self._deliver, sub, body, payload, event_type, content_type)
        if idempotency_key is None:
            return await deliver(), False
        return await _once(
            self._idempotency, f"sub:{sub.id}", idempotency_key, event_type, body, deliver
        )

    async def _deliver(
        self,
        sub: SubscriptionView,
        body: bytes,
        payload: Any,
        event_type: str,
        content_type: str,
    ) -> Answer:
        if not sub.is_active:
            return _filtered("subscription_inactive", "subscription is inactive")
        if not sub.wants(event_type):
            return _filtered(
                "event_type_not_subscribed", f"event type {event_type!r} is not subscribed"
            )
        if sub.accepts is not None and not sub.accepts(payload):
            return _filtered("filter_not_matched", "the body does not match the filter")
        event_id = uuid.uuid4()
        record = EventRecord(
            event_id=event_id,
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type=content_type,
            body=body,
            subscription_id=sub.id,
            application_id=sub.application_id,
        )
        await self._publisher.publish_event(self._events_topic, record)
        return 202, orjson.dumps(
            {
                "status": "accepted",
                "delivery_id": delivery_id_for(event_id, sub.id),
                "event_id": event_id,
                "message": "webhook accepted for delivery",
            }
        )

    async def fanout(
        self,
        body: bytes,
        *,
        application_id: uuid.UUID,
        event_type: str,
        content_type: str,
        idempotency_key: str | None,
    ) -> tuple[Answer, bool]:
        """``POST /events``: one record; the dispatcher fans it out to the matching
        subscriptions of ``application_id``."""
        parse_json(body)
        publish = partial(self._publish_fanout, body, application_id, event_type, content_type)
        if idempotency_key is None:
            return await publish(), False
        # The default application keeps the scope it had before applications existed, so
        # a repeat across the upgrade is still recognised.
        scope = "events" if application_id == DEFAULT_APPLICATION_ID else f"app:{application_id}"
        return await _once(self._idempotency, scope, idempotency_key, event_type, body, publish)

    async def _publish_fanout(
        self, body: bytes, application_id: uuid.UUID, event_type: str, content_type: str
    ) -> Answer:
        record = EventRecord(
            event_id=uuid.uuid4(),
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type=content_type,
            body=body,
            application_id=application_id,
        )
        await self._publisher.publish_event(self._events_topic, record)
        return 202, orjson.dumps(
            {
                "status": "accepted",
                "event_id": record.event_id,
                "message": "event accepted for fan-out to matching subscriptions",
            }
        )


def _signed(secret: str, body: bytes, signature: str | None) -> bool:
    """Over the raw body; failing that, over ``json.dumps(payload)`` as the original signed."""
    if verify_hub_signature(secret, body, signature):
        return True
    if not signature:
        return False
    payload = legacy_payload(body)
    return payload is not None and verify_hub_signature(secret, body, signature, payload)


def _filtered(reason: str, message: str) -> Answer:
    return 200, orjson.dumps({"status": "filtered", "reason": reason, "message": message})


async def _once(
    store: IdempotencyStore,
    scope: str,
    key: str,
    event_type: str,
    body: bytes,
    answer: Callable[[], Awaitable[Answer]],
) -> tuple[Answer, bool]:
    print_ = fingerprint(event_type, body)
    claim = await store.claim(scope, key, print_)
    if isinstance(claim, StoredAnswer):
        return (claim.status_code, claim.body), True
    return await _answer_and_store(store, claim, print_, answer), False


async def _answer_and_store(
    store: IdempotencyStore, claim: Claim, print_: str, answer: Callable[[], Awaitable[Answer]]
) -> Answer:
    try:
        result = await answer()
    except BaseException:
        # Errors are not remembered: a retry after a 503 must be allowed to publish.
        await store.release(claim)
        raise
    await store.store(claim, StoredAnswer(*result), print_)
    return result
