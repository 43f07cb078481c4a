"""The portal's pure parts: the headers a delivery page shows (held to the dispatcher's),
filter parsing, secrets, test events and the dispatcher's rule for them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.dispatcher.delivery import request_headers
from services.dispatcher.fanout import Payload, not_wanted_reason
from services.ingest.errors import Unprocessable
from services.ingest.portal.headers import elide, sent_at, sent_headers, signatures_at
from services.ingest.portal.queries import DeliveryFilters, input_value, parse_filters
from services.ingest.subscriptions import generate_secret
from services.ingest.test_events import sample_payload
from shared.models import Subscription
from shared.records import TEST_EVENT_TYPE, TEST_TRIGGER, DeliveryJob, EventRecord
from shared.signing import standard_webhooks_key
from shared.subscriptions import SubscriptionView


def job(event_type: str = "order.paid") -> DeliveryJob:
    return DeliveryJob(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        event_type=event_type,
        attempt=1,
        first_received_at=datetime.now(UTC),
        content_type="application/json; charset=utf-8",
        body=b'{"order": 1}',
    )


@pytest.mark.parametrize("secret", [None, "s3cret", generate_secret()])
@pytest.mark.parametrize("previous", [None, generate_secret()])
@pytest.mark.parametrize("custom", [(), (("x-tenant", "acme"), ("authorization", "Bearer t"))])
def test_shown_headers_are_the_dispatchers_with_signatures_elided(
    secret: str | None, previous: str | None, custom: tuple[tuple[str, str], ...]
) -> None:
    j = job()
    previous_key = standard_webhooks_key(previous) if secret and previous else None
    sent = request_headers(
        j,
        timestamp=1_767_225_600,
        secret=secret,
        signing_key=standard_webhooks_key(secret) if secret else None,
        custom=custom,
        previous_key=previous_key,
    )
    shown = sent_headers(
        delivery_id=j.delivery_id,
        event_type=j.event_type,
        content_type=j.content_type,
        timestamp=1_767_225_600,
        signatures=0 if secret is None else 2 if previous_key else 1,
        custom=dict(custom),
    )
    assert shown == [(name, elide(name, value)) for name, value in sent.items()]
    for name, value in shown:
        if name in ("webhook-signature", "x-hub-signature-256"):
            assert value.endswith("…")
            assert value != sent[name]


def test_elide_keeps_the_scheme_only() -> None:
    assert elide("webhook-signature", "v1,abc+/=") == "v1,…"
    assert elide("x-hub-signature-256", "sha256=00ff") == "sha256=…"
    assert elide("webhook-signature", "v1,abc v1,def") == "v1,… v1,…"
    assert elide("webhook-signature", "garbage") == "…"
    assert elide("webhook-id", "msg_1") == "msg_1"


def test_sent_at_is_the_row_time_less_the_duration() -> None:
    recorded = datetime(2026, 1, 31, 12, 0, 1, 500_000, tzinfo=UTC)
    assert sent_at(recorded, 2000) == int(datetime(2026, 1, 31, 11, 59, 59, tzinfo=UTC).timestamp())
    assert sent_at(recorded, None) == int(recorded.timestamp())


def test_filters_parse_and_round_trip() -> None:
    endpoint = uuid.uuid4()
    filters = parse_filters("FAILURE", " order.paid ", str(endpoint), "2026-01-31T12:00", "")
    assert filters == DeliveryFilters(
        status="FAILURE",
        event_type="order.paid",
        endpoint=endpoint,
        since=datetime(2026, 1, 31, 12, 0, tzinfo=UTC),
    )
    assert filters.any
    again = dict(p.split("=", 1) for p in filters.query(cursor="abc").split("&"))
    assert again["since"] == "2026-01-31T12%3A00"
    assert again["cursor"] == "abc"
    assert not parse_filters("", "", "", "", "").any
    # An offset is honoured and shown in UTC.
    until = parse_filters(None, None, None, None, "2026-01-31T14:00:30+02:00").until
    assert input_value(until) == "2026-01-31T12:00:30"


@pytest.mark.parametrize(
    "fields",
    [
        ("DELIVERED", None, None, None, None),
        (None, None, "not-a-uuid", None, None),
        (None, None, None, "yesterday", None),
        (None, None, None, None, "2026-13-01T00:00"),
        (None, "order\x00paid", None, None, None),
        (None, "order paid", None, None, None),
    ],
)
def test_bad_filters_are_refused(fields: tuple[str | None, ...]) -> None:
    with pytest.raises(Unprocessable):
        parse_filters(*fields)


def test_sample_payload() -> None:
    sent = datetime(2026, 1, 31, 12, 0, tzinfo=UTC) + timedelta(microseconds=5)
    body = json.loads(sample_payload(sent))
    assert body["type"] == TEST_EVENT_TYPE
    assert body["sent_at"] == "2026-01-31T12:00:00.000005Z"
    assert body["message"]


def test_a_test_event_reaches_its_endpoint_whatever_types_and_filter_it_has() -> None:
    sub = SubscriptionView(
        id=uuid.uuid4(),
        target_url="https://example.com/hook",
        secret_key=None,
        event_types=frozenset({"order.paid"}),
        is_active=True,
        accepts=lambda _body: False,
    )
    raw = sample_payload(datetime.now(UTC))
    body = Payload(raw)

    def event(event_type: str, trigger: str) -> EventRecord:
        return EventRecord(
            event_id=uuid.uuid4(),
            event_type=event_type,
            received_at=datetime.now(UTC),
            content_type="application/json",
            body=raw,
            subscription_id=sub.id,
            trigger=trigger,
        )

    assert not_wanted_reason(sub, event(TEST_EVENT_TYPE, TEST_TRIGGER), body) is None
    assert not_wanted_reason(sub, event("order.paid", TEST_TRIGGER), body) is None
    # The type alone opens nothing: only the trigger, which producers cannot set.
    assert not_wanted_reason(sub, event(TEST_EVENT_TYPE, "ingest"), body) is not None
    assert not_wanted_reason(sub, event("order.paid", "ingest"), body) is not None
    disabled = SubscriptionView(
        id=sub.id,
        target_url=sub.target_url,
        secret_key=None,
        event_types=frozenset(),
        is_active=False,
    )
    assert (
        not_wanted_reason(disabled, event(TEST_EVENT_TYPE, TEST_TRIGGER), body)
        == "not delivered: subscription is inactive"
    )


def test_signatures_follow_the_endpoints_rotation() -> None:
    rotated = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    sub = Subscription(
        secret_key="new",
        previous_secret_key="old",
        secret_rotated_at=rotated,
        previous_secret_expires_at=rotated + timedelta(days=1),
    )
    assert signatures_at(None, rotated) == 0
    assert signatures_at(Subscription(secret_key=None), rotated) == 0
    assert signatures_at(sub, rotated - timedelta(seconds=1)) == 1  # before the rotation
    assert signatures_at(sub, rotated + timedelta(hours=1)) == 2  # during the overlap
    assert signatures_at(sub, rotated + timedelta(days=2)) == 1  # after it
