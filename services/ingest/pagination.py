"""Keyset pagination for the list routes: ``?limit=&cursor=`` → ``{"data", "next_cursor"}``.

Newest first, by ``(created_at, id)``: a cursor names the last row of a page, so a page
costs an index range scan however deep it is, and rows created while a client pages
through never shift what it sees (``OFFSET`` would skip or repeat them).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from services.ingest.errors import Unprocessable

T = TypeVar("T")
Q = TypeVar("Q", bound=Select[Any])
MAX_LIMIT = 250

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="`next_cursor` of the previous page; absent: the first"),
]


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, row_id = raw.partition("|")
        created_at = datetime.fromisoformat(when)
        if created_at.tzinfo is None:
            raise ValueError("naive")
        return created_at, uuid.UUID(row_id)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise Unprocessable(["query", "cursor"], "not a cursor from this list") from None


def keyset(
    query: Q,
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
) -> Q:
    """``query`` narrowed to the page after ``cursor``, one row more than ``limit`` (so
    ``page`` can tell whether another page follows)."""
    if cursor is not None:
        query = query.where(tuple_(created_at, row_id) < decode_cursor(cursor))
    return query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)


def page(rows: Sequence[Any], limit: int, out: Callable[[Any], T]) -> Page[T]:
    shown = rows[:limit]
    more = len(rows) > limit
    return Page[T](
        data=[out(r) for r in shown],
        next_cursor=encode_cursor(shown[-1].created_at, shown[-1].id) if more else None,
    )
