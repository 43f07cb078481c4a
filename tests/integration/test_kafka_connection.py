"""A request written to a broker connection that just closed fails as a connection error
on uvloop too (``shared.kafka``, aiokafka #1038): aiokafka retries that, where the
``RuntimeError`` uvloop raises ended a consumer's coordination for good."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import shared.kafka  # noqa: F401  (wraps the connection's send)
from shared.settings import Settings


def _on_uvloop(bootstrap: str, use: Callable[[AIOKafkaConnection], Awaitable[str]]) -> str:
    """``use`` on a fresh connection to the broker, on uvloop as the services run it
    (asyncio's own loop raises a connection error here already)."""
    host, port = bootstrap.rsplit(":", 1)

    async def attempt() -> str:
        conn = await create_conn(host, int(port))
        try:
            return await use(conn)
        finally:
            conn.close()

    return uvloop.run(attempt())


def test_a_write_on_a_closed_broker_connection_is_a_connection_error(settings: Settings) -> None:
    async def write_after_the_broker_left(conn: AIOKafkaConnection) -> str:
        conn._writer.transport.abort()  # the broker went away under it
        await asyncio.sleep(0)  # one turn of the loop: the close takes effect, no wait
        with pytest.raises(KafkaConnectionError) as raised:
            await conn.send(MetadataRequest(topics=[]))
        return str(raised.value)

    assert "127.0.0.1" in _on_uvloop(settings.kafka_bootstrap, write_after_the_broker_left)


def test_other_runtime_errors_are_not_disguised(settings: Settings) -> None:
    async def send_unpreparable(conn: AIOKafkaConnection) -> str:
        with pytest.raises(RuntimeError, match="not a broken connection") as raised:
            await conn.send(_Unpreparable())
        return str(raised.value)

    assert _on_uvloop(settings.kafka_bootstrap, send_unpreparable) == "not a broken connection"


class _Unpreparable:
    def prepare(self, versions: object) -> None:
        raise RuntimeError("not a broken connection")
