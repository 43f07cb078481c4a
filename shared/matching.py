"""Whether a subscription takes an event: the one decision fan-out and backfill share.

Fan-out (services/dispatcher/fanout.py) asks it of every subscription an event could go
to; backfill (services/janitor/backfill.py) asks it of one subscription for every event
of a window of the log. Both must agree, or a backfill would send what live traffic
never would (or miss what it would have sent).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from shared.records import TEST_TRIGGER, EventRecord
from shared.subscriptions import SubscriptionView


class Payload:
    """An event's body decoded as JSON once, and only if a filter asks for it."""

    __slots__ = ("_body", "_value")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._value: Any = _UNREAD

    @property
    def value(self) -> Any:
        if self._value is _UNREAD:
            self._value = _decode(self._body)
        return self._value

    def accepted_by(self, sub: SubscriptionView) -> bool:
        return sub.accepts is None or sub.accepts(self.value)


_UNREAD = object()


def _decode(body: bytes) -> Any:
    """Ingest accepted only JSON; orjson refuses lone surrogates, the stdlib does not.
    Anything else (None) matches no filter."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body.decode())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None


def unavailable_reason(sub: SubscriptionView | None) -> str | None:
    """Why nothing at all goes to this subscription now (deleted, inactive), or None."""
    if sub is None:
        return "not delivered: subscription no longer exists"
    if not sub.is_active:
        return "not delivered: subscription is inactive"
    return None


def not_wanted_reason(
    sub: SubscriptionView | None, event: EventRecord, payload: Payload
) -> str | None:
    """Why a targeted event is not delivered to its subscription, or None to deliver.
    A test event goes to its subscription whatever its types and filter say."""
    if (unavailable := unavailable_reason(sub)) is not None:
        return unavailable
    assert sub is not None
    if event.trigger == TEST_TRIGGER:
        return None
    event_type = event.event_type
    if not sub.wants(event_type):
        return f"not delivered: subscription no longer accepts event type {event_type!r}"
    if not payload.accepted_by(sub):
        return "not delivered: the body no longer matches the subscription's filter"
    return None


def takes(sub: SubscriptionView, event: EventRecord, payload: Payload) -> bool:
    """Whether fan-out gives ``event`` to ``sub``: a targeted event only to its own
    subscription (``not_wanted_reason``), any other event of the subscription's
    application when it is active, wants the type and its filter accepts the body (what
    ``SubscriptionCache.matching`` and ``Payload.accepted_by`` decide in fan-out)."""
    if event.application_id != sub.application_id:
        return False
    if event.subscription_id is not None:
        return event.subscription_id == sub.id and not_wanted_reason(sub, event, payload) is None
    return sub.wants(event.event_type) and payload.accepted_by(sub)
