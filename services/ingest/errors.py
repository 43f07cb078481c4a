"""One error vocabulary for the HTTP API.

The core raises a ``HookstreamError`` subclass; ``install_error_handlers`` turns every error,
ours or the framework's, into JSON ``{"detail": ...}`` with the right status. Clients never
see a stack trace: an unexpected exception is logged here and answered with a bare 500.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from shared.logging import get_logger

log = get_logger("ingest.errors")


class HookstreamError(Exception):
    """A domain error: the request cannot be served as asked. Maps to a 4xx (or 503)."""

    status_code = 400
    default_detail = "bad request"

    def __init__(self, detail: Any = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.detail = self.default_detail if detail is None else detail
        self.headers = dict(headers or {})
        super().__init__(str(self.detail))


class BadRequest(HookstreamError):
    status_code = 400


class InvalidJSON(BadRequest):
    default_detail = "the request body is not valid JSON"


class Unauthorized(HookstreamError):
    status_code = 401
    default_detail = "missing or invalid API key"

    def __init__(self, detail: Any = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidSignature(HookstreamError):
    status_code = 401
    default_detail = "missing or invalid x-hub-signature-256"


class Forbidden(HookstreamError):
    """A valid credential that may not use this route (an application's key on an
    operator-only route). Never used for another application's objects: those are 404."""

    status_code = 403
    default_detail = "forbidden"


class NotFound(HookstreamError):
    status_code = 404
    default_detail = "not found"


class Conflict(HookstreamError):
    status_code = 409
    default_detail = "conflict"


class PayloadTooLarge(HookstreamError):
    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")


class Unprocessable(HookstreamError):
    """422 in the same shape as FastAPI's validation errors: a list of ``{loc, msg, type}``."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], msg: str, type_: str = "value_error") -> None:
        super().__init__([{"loc": list(loc), "msg": msg, "type": type_}])


class ServiceUnavailable(HookstreamError):
    status_code = 503

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


# --- OpenAPI ------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer: ``{"detail": "<what went wrong>"}``."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the documented error answers it can give."""
    described = {
        400: "Malformed request: the body is not valid JSON",
        401: "Missing or invalid credentials (API key or signature)",
        403: "An application's key on a route that needs the operator key",
        404: "Unknown id",
        409: "A request with the same Idempotency-Key is still in progress; retry later",
        413: "Body larger than HOOKSTREAM_MAX_BODY_BYTES",
        422: "Validation error: a parameter, header or body field is invalid",
        503: "The broker did not acknowledge in time; retry after Retry-After seconds",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "description": described[code],
            "model": ValidationErrorBody if code == 422 else ErrorBody,
        }
        if code == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
            }
        if code in (409, 503):
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "string"}, "description": "seconds"}
            }
        out[code] = entry
    return out


# --- handlers -----------------------------------------------------------------------


def error_response(
    status_code: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"detail": detail}),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # FastAPI's default echoes "input" and "ctx": an invalid secret_key would come back in
    # the response. Keep only where and what.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in errors
    ]


async def _on_domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HookstreamError)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, InvalidJSON.default_detail)
    return error_response(422, _validation_detail(errors))


async def _on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, exc.detail, exc.headers)


def _safe_message(exc: BaseException) -> str:
    # SQLAlchemy's message lists the statement's bound parameters, which can include a
    # subscription secret; the driver's own message does not.
    if isinstance(exc, StatementError):
        return f"{type(exc.orig).__name__}: {exc.orig}"
    return str(exc)


async def _on_client_disconnect(_: Request, __: Exception) -> Response:
    # The client went away mid-body: nobody reads this answer, and it is no server error.
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error",
        path=request.url.path,
        method=request.method,
        error_type=type(exc).__name__,
        error=_safe_message(exc)[:500],
        traceback="".join(traceback.format_tb(exc.__traceback__)),
    )
    return error_response(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HookstreamError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
