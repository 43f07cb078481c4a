"""Ordered delivery's pure parts: the intake order of tickets, and stored jobs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from services.dispatcher.ordered import IntakeOrder, pack_headers, unpack_job
from shared.records import DeliveryJob


def _job(**kw: object) -> DeliveryJob:
    fields: dict[str, object] = {
        "delivery_id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "subscription_id": uuid.uuid4(),
        "event_type": "ledger.entry",
        "attempt": 1,
        "first_received_at": datetime.now(UTC),
        "content_type": "application/json",
        "body": b'{"n": 1}',
    }
    fields.update(kw)
    return DeliveryJob(**fields)  # type: ignore[arg-type]


def test_a_stored_job_comes_back_as_it_was() -> None:
    job = _job(trigger="backfill", extra={"traceparent": b"00-abc-def-01"})
    again = unpack_job(pack_headers(job), job.body)
    assert again == job
    assert again.trigger == "backfill"
    assert again.extra == job.extra
    # Bytes that are not UTF-8 survive too (headers are bytes on the wire).
    odd = _job(extra={"x": bytes(range(256))})
    assert unpack_job(pack_headers(odd), odd.body).extra == odd.extra


async def test_tickets_route_jobs_of_a_subscription_in_the_order_they_were_read() -> None:
    order = IntakeOrder()
    sub, other = uuid.uuid4(), uuid.uuid4()
    routed: list[str] = []

    async def route(name: str, ticket_delay: float, ticket) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(ticket_delay)  # lookups finish in any order
        await ticket.turn()
        routed.append(name)
        ticket.release()

    tickets = [order.ticket(sub) for _ in range(3)]
    elsewhere = order.ticket(other)
    await asyncio.gather(
        route("a", 0.03, tickets[0]),
        route("b", 0.0, tickets[1]),
        route("c", 0.01, tickets[2]),
        route("x", 0.0, elsewhere),
    )
    assert [r for r in routed if r != "x"] == ["a", "b", "c"]
    assert routed[0] == "x"  # another subscription never waits
    assert len(order) == 0  # nothing left behind


async def test_a_cancelled_job_lets_the_next_one_go() -> None:
    order = IntakeOrder()
    sub = uuid.uuid4()
    first, second = order.ticket(sub), order.ticket(sub)
    first.release()  # as the stage does when the first job's task is cancelled
    await asyncio.wait_for(second.turn(), 1)
    second.release()
    assert len(order) == 0
