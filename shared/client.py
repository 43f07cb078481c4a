"""A typed client of Hookstream's HTTP API: the one place outside the service that knows
its routes. The ``hookstream`` command line is built on it; scripts can use it too::

    with Client("http://127.0.0.1:8000", api_key) as hs:
        sub = hs.create_subscription("https://example.com/hook", event_types=["order.paid"])
        hs.publish(b'{"id": 1}', event_type="order.paid")

Every answer is parsed into a small pydantic model (unknown fields are kept, so a newer
server loses nothing in ``model_dump``). A refusal is an ``ApiError`` with the HTTP status
and the server's ``detail``; a server that cannot be reached is ``Unreachable``. Both are
``ClientError``s, and nothing else escapes a call (httpx's own errors are translated).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.signing import hub_signature

DEFAULT_URL = "http://127.0.0.1:8000"
# Generous for a management call: ingest answers a 202 only after the broker acked
# (HOOKSTREAM_PUBLISH_TIMEOUT, 5 s by default), so anything past 30 s is a stuck server.
DEFAULT_TIMEOUT = 30.0

AttemptState = Literal["SUCCESS", "FAILED_ATTEMPT", "FAILURE"]


# --- errors -------------------------------------------------------------------------


class ClientError(Exception):
    """Any failed call: the server refused it, or could not be reached or understood."""


class ApiError(ClientError):
    """The server answered with an error: ``status`` and its ``detail`` as one message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unreachable(ClientError):
    """No answer: connection refused, DNS failure, timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


def error_message(response: httpx.Response) -> str:
    """The server's ``{"detail": ...}`` as one line; validation lists as ``field: msg``."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for issue in detail:
            if not isinstance(issue, dict):
                parts.append(str(issue))
                continue
            loc = [str(p) for p in issue.get("loc", [])]
            # ["body", "target_url"]: the first element only says where FastAPI looked.
            where = ".".join(loc[1:] if len(loc) > 1 else loc)
            parts.append(f"{where}: {issue.get('msg', '')}" if where else str(issue.get("msg")))
        return "; ".join(parts)
    text = response.text.strip()
    return text[:200] if text else response.reason_phrase or "no detail"


# --- answers ------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


T = TypeVar("T", bound=_Answer)


class Page(_Answer, Generic[T]):
    """A keyset page, newest first: pass ``next_cursor`` back for the next one."""

    data: list[T]
    next_cursor: str | None


class Application(_Answer):
    id: uuid.UUID
    uid: str | None
    name: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ApiKey(_Answer):
    id: uuid.UUID
    application_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    key: str | None = None  # only in the create answer


class PortalLink(_Answer):
    url: str
    expires_at: datetime


class Subscription(_Answer):
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
    previous_secret_expires_at: datetime | None = None
    deactivated_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    secret_key: str | None = None  # only in the create answer


class IngestAnswer(_Answer):
    """``POST /ingest/{id}``: accepted (with the delivery id the target will see as
    ``webhook-id``) or filtered (with the reason nothing will be delivered)."""

    status: Literal["accepted", "filtered"]
    message: str
    delivery_id: uuid.UUID | None = None
    event_id: uuid.UUID | None = None
    reason: str | None = None


class EventAccepted(_Answer):
    status: Literal["accepted"]
    event_id: uuid.UUID
    message: str


class Attempt(_Answer):
    id: uuid.UUID
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    target_url: str
    event_type: str
    attempt_number: int
    status_code: int | None
    status: AttemptState
    error_details: str | None
    duration_ms: int | None
    response_excerpt: str | None
    trigger: str
    created_at: datetime


class Delivery(_Answer):
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    total_attempts: int
    latest_status: AttemptState
    latest_attempt: Attempt
    logs: list[Attempt]


class SubscriptionDeliveries(_Answer):
    subscription_id: uuid.UUID
    total_attempts: int
    successful_deliveries: int
    failed_deliveries: int
    failed_attempts: int
    recent_logs: list[Attempt]  # newest first


class DeadLetter(_Answer):
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    target_url: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    trigger: str
    failed_at: datetime


class DeadLetters(_Answer):
    count: int
    items: list[DeadLetter]  # newest first


class DeliveryRow(_Answer):
    """A delivery as search finds it: its latest attempt (``delivery()`` has every one)."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    application_id: uuid.UUID
    event_type: str
    target_url: str
    status: AttemptState
    attempt_number: int
    status_code: int | None
    error_details: str | None
    duration_ms: int | None
    trigger: str
    latest_attempt_at: datetime


class EventRow(_Answer):
    """An ingested event, without its body."""

    event_id: uuid.UUID
    event_type: str
    application_id: uuid.UUID
    subscription_id: uuid.UUID | None  # set for targeted ingests
    received_at: datetime
    content_type: str
    size_bytes: int


BackfillState = Literal["running", "done", "cancelled", "failed"]


class Backfill(_Answer):
    """A backfill's state; ``scanned`` ≥ ``matched`` ≥ ``published`` grow while it runs."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    application_id: uuid.UUID
    status: BackfillState
    since: datetime
    until: datetime
    scanned: int
    matched: int
    published: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class Redelivery(_Answer):
    status: Literal["accepted"]
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    trigger: str
    message: str


class Replay(_Answer):
    status: Literal["accepted"]
    subscription_id: uuid.UUID
    since: datetime
    replayed: int
    expired: int
    delivery_ids: list[uuid.UUID]
    message: str


# --- the client ---------------------------------------------------------------------


class _Unset(Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET
"""For update calls: leave the field as it is (``None`` is a value: it removes one)."""

Id = uuid.UUID | str
A = TypeVar("A", bound=_Answer)


def _seg(value: Id) -> str:
    """One path segment: an application uid or any id typed by a user cannot add a path."""
    return quote(str(value), safe="")


def _changes(**fields: Any) -> dict[str, Any]:
    """The fields given, as JSON-ready values (a Mapping as a dict, a Sequence as a list)."""
    return {name: _plain(value) for name, value in fields.items() if value is not UNSET}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


def rfc3339(moment: datetime) -> str:
    """UTC with a ``Z``, as the API wants (it refuses naive or numeric times)."""
    if moment.tzinfo is None:
        raise ValueError("a time without a UTC offset is ambiguous")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Client:
    """Synchronous, one connection pool; close it (or use ``with``) when done."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, content=content, params=query, headers=headers
            )
        except httpx.TimeoutException:
            raise Unreachable(self.url, "no answer within the timeout") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.url, _transport_reason(exc)) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, error_message(response))
        return response

    def _get(self, model: type[A], path: str, **params: Any) -> A:
        return _parse(model, self._request("GET", path, params=params))

    # --- applications -------------------------------------------------------------

    def list_applications(self, limit: int = 50, cursor: str | None = None) -> Page[Application]:
        return self._get(Page[Application], "/applications", limit=limit, cursor=cursor)

    def create_application(
        self, name: str, *, uid: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Application:
        body = _changes(name=name, uid=uid or UNSET, metadata=metadata or UNSET)
        return _parse(Application, self._request("POST", "/applications", json=body))

    def get_application(self, app: Id) -> Application:
        """``app`` is the application's id or uid."""
        return self._get(Application, f"/applications/{_seg(app)}")

    def update_application(
        self,
        app: Id,
        *,
        name: str | _Unset = UNSET,
        uid: str | _Unset | None = UNSET,
        metadata: Mapping[str, Any] | _Unset = UNSET,
    ) -> Application:
        """Only the fields given change; ``uid=None`` removes the uid."""
        body = _changes(name=name, uid=uid, metadata=metadata)
        return _parse(Application, self._request("PATCH", f"/applications/{_seg(app)}", json=body))

    def delete_application(self, app: Id) -> None:
        self._request("DELETE", f"/applications/{_seg(app)}")

    # --- API keys and portal links ---------------------------------------------------

    def create_key(self, app: Id, name: str, *, expires_at: datetime | None = None) -> ApiKey:
        """The answer's ``key`` is the only time the key is shown."""
        body: dict[str, Any] = {"name": name}
        if expires_at is not None:
            body["expires_at"] = rfc3339(expires_at)
        path = f"/applications/{_seg(app)}/api-keys"
        return _parse(ApiKey, self._request("POST", path, json=body))

    def list_keys(self, app: Id, limit: int = 50, cursor: str | None = None) -> Page[ApiKey]:
        path = f"/applications/{_seg(app)}/api-keys"
        return self._get(Page[ApiKey], path, limit=limit, cursor=cursor)

    def revoke_key(self, app: Id, key_id: Id) -> None:
        self._request("DELETE", f"/applications/{_seg(app)}/api-keys/{_seg(key_id)}")

    def portal_link(self, app: Id, *, expires_in: int | None = None) -> PortalLink:
        body = None if expires_in is None else {"expires_in": expires_in}
        path = f"/applications/{_seg(app)}/portal-links"
        return _parse(PortalLink, self._request("POST", path, json=body))

    # --- subscriptions ------------------------------------------------------------

    def list_subscriptions(self, skip: int = 0, limit: int = 100) -> list[Subscription]:
        """Every subscription the key sees, oldest first (the seed's flat list)."""
        response = self._request("GET", "/subscriptions/", params={"skip": skip, "limit": limit})
        return [_parse_value(Subscription, item) for item in _json_list(response)]

    def list_application_subscriptions(
        self, app: Id, limit: int = 50, cursor: str | None = None
    ) -> Page[Subscription]:
        path = f"/applications/{_seg(app)}/subscriptions"
        return self._get(Page[Subscription], path, limit=limit, cursor=cursor)

    def create_subscription(
        self,
        target_url: str,
        *,
        app: Id | None = None,
        secret_key: str | None = None,
        event_types: Sequence[str] = (),
        is_active: bool = True,
        filter: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limit: int | None = None,
        ordered: bool = False,
    ) -> Subscription:
        """In ``app``, or (without one) in the default application or the key's own.
        The answer's ``secret_key`` is the only time the secret is shown."""
        body = _changes(
            target_url=target_url,
            secret_key=secret_key,
            event_types=event_types,
            is_active=is_active,
            filter=filter,
            headers=headers,
            rate_limit=rate_limit,
            ordered=ordered,
        )
        path = "/subscriptions/" if app is None else f"/applications/{_seg(app)}/subscriptions"
        return _parse(Subscription, self._request("POST", path, json=body))

    def get_subscription(self, subscription_id: Id) -> Subscription:
        return self._get(Subscription, f"/subscriptions/{_seg(subscription_id)}")

    def update_subscription(
        self,
        subscription_id: Id,
        *,
        target_url: str | _Unset = UNSET,
        secret_key: str | _Unset | None = UNSET,
        event_types: Sequence[str] | _Unset = UNSET,
        is_active: bool | _Unset = UNSET,
        filter: Mapping[str, Any] | _Unset | None = UNSET,
        headers: Mapping[str, str] | _Unset | None = UNSET,
        rate_limit: int | _Unset | None = UNSET,
        ordered: bool | _Unset = UNSET,
    ) -> Subscription:
        """Only the fields given change; ``None`` removes a secret, filter, headers or
        rate limit."""
        body = _changes(
            target_url=target_url,
            secret_key=secret_key,
            event_types=event_types,
            is_active=is_active,
            filter=filter,
            headers=headers,
            rate_limit=rate_limit,
            ordered=ordered,
        )
        path = f"/subscriptions/{_seg(subscription_id)}"
        return _parse(Subscription, self._request("PATCH", path, json=body))

    def delete_subscription(self, subscription_id: Id) -> None:
        self._request("DELETE", f"/subscriptions/{_seg(subscription_id)}")

    # --- sending ------------------------------------------------------------------

    def send(
        self,
        subscription_id: Id,
        body: bytes,
        *,
        event_type: str,
        secret: str | None = None,
        idempotency_key: str | None = None,
        content_type: str = "application/json",
    ) -> IngestAnswer:
        """``POST /ingest/{id}`` as an outside sender: signed with ``secret`` (the
        ``x-hub-signature-256`` HMAC of these exact bytes) when given; no API key needed."""
        headers = {"content-type": content_type, "x-webhook-event": event_type}
        if secret is not None:
            headers["x-hub-signature-256"] = hub_signature(secret, body)
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        path = f"/ingest/{_seg(subscription_id)}"
        return _parse(IngestAnswer, self._request("POST", path, content=body, headers=headers))

    def publish(
        self,
        body: bytes,
        *,
        event_type: str,
        app: Id | None = None,
        idempotency_key: str | None = None,
        content_type: str = "application/json",
    ) -> EventAccepted:
        """Fan an event out to the matching subscriptions of ``app`` (without one: the
        default application, or the key's own)."""
        headers = {"content-type": content_type, "x-webhook-event": event_type}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        path = "/events" if app is None else f"/applications/{_seg(app)}/events"
        return _parse(EventAccepted, self._request("POST", path, content=body, headers=headers))

    # --- status and redelivery ----------------------------------------------------

    def delivery(self, delivery_id: Id) -> Delivery:
        """Every attempt of one delivery; 404 until its first attempt is recorded."""
        return self._get(Delivery, f"/status/deliveries/{_seg(delivery_id)}")

    def subscription_deliveries(
        self, subscription_id: Id, limit: int = 50
    ) -> SubscriptionDeliveries:
        """Attempt totals and the latest ``limit`` attempts (at most 1000), newest first."""
        path = f"/status/subscriptions/{_seg(subscription_id)}/deliveries"
        return self._get(SubscriptionDeliveries, path, limit=limit)

    def dead_letters(self, subscription_id: Id | None = None, limit: int = 100) -> DeadLetters:
        """Deliveries whose latest attempt ended them with FAILURE, newest first."""
        sub = None if subscription_id is None else str(subscription_id)
        return self._get(DeadLetters, "/status/dlq", subscription_id=sub, limit=limit)

    def search_deliveries(
        self,
        *,
        status: AttemptState | None = None,
        subscription_id: Id | None = None,
        event_type: str | None = None,
        application_id: Id | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[DeliveryRow]:
        """Deliveries by their latest attempt, newest first; every filter applies to that
        attempt (``since`` inclusive, ``until`` exclusive). A page may be shorter than
        ``limit``, even empty, while ``next_cursor`` is set: follow it until it is None."""
        return self._get(
            Page[DeliveryRow],
            "/status/deliveries",
            status=status,
            subscription_id=_opt(subscription_id),
            event_type=event_type,
            application_id=_opt(application_id),
            since=_opt_time(since),
            until=_opt_time(until),
            limit=limit,
            cursor=cursor,
        )

    def search_events(
        self,
        *,
        event_type: str | None = None,
        application_id: Id | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[EventRow]:
        """Ingested events (without bodies) by ``received_at``, newest first."""
        return self._get(
            Page[EventRow],
            "/status/events",
            event_type=event_type,
            application_id=_opt(application_id),
            since=_opt_time(since),
            until=_opt_time(until),
            limit=limit,
            cursor=cursor,
        )

    def retry(self, delivery_id: Id) -> Redelivery:
        path = f"/status/deliveries/{_seg(delivery_id)}/retry"
        return _parse(Redelivery, self._request("POST", path))

    def replay(self, subscription_id: Id, since: datetime | None = None) -> Replay:
        """Re-send the subscription's deliveries that failed since ``since`` (server
        default: the last 24 hours)."""
        params = {"since": None if since is None else rfc3339(since)}
        path = f"/status/subscriptions/{_seg(subscription_id)}/replay"
        return _parse(Replay, self._request("POST", path, params=params))

    # --- backfills -----------------------------------------------------------------

    def start_backfill(
        self, subscription_id: Id, since: datetime, until: datetime | None = None
    ) -> Backfill:
        """Deliver to the subscription the logged events of ``since``..``until`` (default
        now) that it takes; the answer is the backfill, still running."""
        body = {"since": rfc3339(since)}
        if until is not None:
            body["until"] = rfc3339(until)
        path = f"/subscriptions/{_seg(subscription_id)}/backfill"
        return _parse(Backfill, self._request("POST", path, json=body))

    def get_backfill(self, backfill_id: Id) -> Backfill:
        return self._get(Backfill, f"/backfills/{_seg(backfill_id)}")

    def cancel_backfill(self, backfill_id: Id) -> Backfill:
        """Cancelled if it was running; a finished one is answered as it is."""
        return _parse(Backfill, self._request("DELETE", f"/backfills/{_seg(backfill_id)}"))


def _opt(value: Id | None) -> str | None:
    return None if value is None else str(value)


def _opt_time(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "unknown host"
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection without an answer"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json_list(response: httpx.Response) -> list[Any]:
    try:
        value = response.json()
    except ValueError:
        raise ClientError(f"the answer to {response.request.url.path} is not JSON") from None
    if not isinstance(value, list):
        raise ClientError(f"the answer to {response.request.url.path} is not a list")
    return value


def _parse(model: type[A], response: httpx.Response) -> A:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ClientError(
            f"unexpected answer to {response.request.url.path}: {exc.errors()[0]['msg']}"
        ) from None


def _parse_value(model: type[A], value: Any) -> A:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ClientError(f"unexpected answer: {exc.errors()[0]['msg']}") from None
