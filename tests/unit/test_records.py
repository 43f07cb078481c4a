import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from shared.records import DeliveryJob, EventRecord, RecordError, delivery_id_for


def _event(subscription_id: uuid.UUID | None = None) -> EventRecord:
    return EventRecord(
        event_id=uuid.uuid4(),
        event_type="order.created",
        received_at=datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC),
        content_type="application/json",
        body=b'{"a": 1,  "b":[2]}',
        subscription_id=subscription_id,
    )


def test_event_record_round_trip_keeps_exact_bytes() -> None:
    sub = uuid.uuid4()
    event = _event(sub)
    decoded = EventRecord.decode(event.body, event.headers())
    assert decoded == event
    assert event.key == str(sub).encode()


def test_fanout_event_is_keyed_by_application_so_its_events_keep_their_order() -> None:
    event = _event()
    assert event.key == str(event.application_id).encode()
    assert "subscription_id" not in dict(event.headers())


def test_delivery_id_is_uuid5_of_event_and_subscription() -> None:
    event_id, sub = uuid.uuid4(), uuid.uuid4()
    assert delivery_id_for(event_id, sub) == uuid.uuid5(event_id, str(sub))
    assert delivery_id_for(event_id, sub) == delivery_id_for(event_id, sub)


def test_delivery_job_round_trip_and_next_attempt() -> None:
    sub = uuid.uuid4()
    job = DeliveryJob.for_event(_event(sub), sub)
    assert job.attempt == 1
    due = datetime(2026, 11, 29, 12, 0, 10, tzinfo=UTC)
    retry = job.next_attempt(due, "HTTP 500")
    decoded = DeliveryJob.decode(retry.body, retry.headers())
    assert decoded == retry
    assert decoded.attempt == 2
    assert decoded.due_at == due
    assert decoded.last_error == "HTTP 500"


def test_a_run_is_carried_by_its_retries_and_the_first_run_adds_no_header() -> None:
    sub = uuid.uuid4()
    job = DeliveryJob.for_event(_event(sub), sub)
    assert job.run == ""
    assert "run" not in dict(job.headers())
    rerun = dataclasses.replace(job, trigger="manual-retry", run="r1")
    retry = rerun.next_attempt(datetime(2026, 11, 29, 12, 0, 10, tzinfo=UTC), "HTTP 500")
    decoded = DeliveryJob.decode(retry.body, retry.headers())
    assert decoded.run == "r1"
    assert "run" not in decoded.extra


def test_undecodable_headers_raise_record_error() -> None:
    with pytest.raises(RecordError, match="event_id"):
        EventRecord.decode(b"{}", [("event_type", b"x")])
    with pytest.raises(RecordError, match="UUID"):
        EventRecord.decode(
            b"{}",
            [
                ("event_id", b"nope"),
                ("event_type", b"x"),
                ("received_at", b"1"),
                ("content_type", b"application/json"),
            ],
        )
