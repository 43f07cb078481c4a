"""Structured logging: JSON lines in production, a readable console mode for `make run`.

Log lines carry ids (event_id, delivery_id, subscription_id, attempt), never secrets or
payloads. ``redact`` is the last processor so a careless ``log.info(secret_key=...)``
still prints ``"***"``.

One format for every line: the libraries' stdlib records (aiokafka, uvicorn, asyncio, the
OpenTelemetry exporter) go through the same processors and renderer as the services' own
(structlog's ``ProcessorFormatter``), with the same keys: ``event``, ``level``,
``timestamp``, ``logger``, the bound context, and ``trace_id``/``span_id`` while a span is
active (shared/tracing.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from shared import tracing
from shared.settings import Settings

_SECRET_KEYS = frozenset(
    {"secret", "secret_key", "api_key", "authorization", "password", "signature", "body", "payload"}
)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


def add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``trace_id`` and ``span_id`` of the active span, in the W3C hex form a trace UI
    searches for. Off, one boolean read."""
    if tracing.enabled:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


class CoordinatorNotReady(logging.Filter):
    """aiokafka's "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError"
    at ERROR, as INFO.

    On a broker that has just started, the group coordinator is unknown until the
    ``__consumer_offsets`` topic exists and its partitions are loaded (a few seconds on the
    local single-node Kafka): every consumer group logs this while aiokafka retries on its
    own, and nothing is wrong. Other coordinator errors keep their level.
    """

    _MESSAGE = "Group Coordinator Request failed: %s"
    _NOT_READY = ("CoordinatorNotAvailable", "CoordinatorLoadInProgress", "GroupLoadInProgress")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.msg == self._MESSAGE and record.args:
            error = record.args[0] if isinstance(record.args, tuple) else record.args
            if any(name in f"{type(error).__name__} {error}" for name in self._NOT_READY):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class NamedPrintLoggerFactory:
    """structlog's PrintLoggerFactory, keeping ``get_logger``'s name for add_logger_name
    (the libraries' lines get their stdlib logger's name under the same key)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        logger = structlog.PrintLogger(self._file)
        logger.name = str(args[0]) if args else "hookstream"  # type: ignore[attr-defined]
        return logger


def configure_logging(settings: Settings, service: str | None = None) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if settings.log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    # What both kinds of line go through before the renderer.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_logger_name,
        add_trace_ids,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=NamedPrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    # Libraries (aiokafka, uvicorn) log through stdlib; keep them quiet but visible.
    logging.basicConfig(level=max(level, logging.WARNING), handlers=[handler], force=True)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    if not any(isinstance(f, CoordinatorNotReady) for f in coordinator.filters):
        coordinator.addFilter(CoordinatorNotReady())


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
