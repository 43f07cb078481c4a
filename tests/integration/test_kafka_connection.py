"""A request written to a broker connection that just closed fails as a connection error
on uvloop too (``shared.kafka``, aiokafka #1038): aiokafka retries that, where the
``RuntimeError`` uvloop raises ended a consumer's coordination for good."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import shared.kafka  # noqa: F401  (wraps the connection's send)
from shared.settings import Settings


def _write_on_a_closed_connection(bootstrap: str) -> str:
    host, port = bootstrap.rsplit(":", 1)

    async def attempt() -> str:
        conn = await create_conn(host, int(port))
        try:
            conn._writer.transport.abort()  # the broker went away under it
            await asyncio.sleep(0)
            with pytest.raises(KafkaConnectionError) as raised:
                await conn.send(MetadataRequest(topics=[]))
            return str(raised.value)
        finally:
            conn.close()

    return uvloop.run(attempt())


def test_a_write_on_a_closed_broker_connection_is_a_connection_error(settings: Settings) -> None:
    # On uvloop, as the services run: asyncio's own loop raises the right error already.
    assert "127.0.0.1" in _write_on_a_closed_connection(settings.kafka_bootstrap)


def test_other_runtime_errors_are_not_disguised(settings: Settings) -> None:
    async def attempt() -> None:
        host, port = settings.kafka_bootstrap.rsplit(":", 1)
        conn = await create_conn(host, int(port))
        try:
            with pytest.raises(RuntimeError, match="not a broken connection"):
                await conn.send(_Unpreparable())
        finally:
            conn.close()

    uvloop.run(attempt())


class _Unpreparable:
    def prepare(self, versions: object) -> None:
        raise RuntimeError("not a broken connection")
