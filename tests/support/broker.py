"""Test helpers around the broker: a private Kafka to break, a topic probe, an ingest process.

``PrivateKafka`` runs a disposable single-node Kafka through ``deploy/local/stack.sh`` in
a temporary directory on its own ports, so a test can stop it without touching the shared
stack. ``TopicProbe`` reads a topic without a consumer group (end offsets, new records).
``IngestServer`` runs ``python -m services.ingest`` on a free port and waits for /health.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.kafka import admin_client
from tests.support.private_stack import link_main_kafka_libs, run_stack_sh
from tests.support.procs import ServiceProcess, free_port
from tests.support.stack import IsolatedStack


class PrivateKafka:
    """A throwaway Kafka under ``local_dir``; stopped by its own pid file, never by name."""

    def __init__(self, local_dir: Path) -> None:
        self.local_dir = local_dir
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _stack(self, *args: str) -> None:
        ports = {
            "HOOKSTREAM_KAFKA_PORT": self.port,
            "HOOKSTREAM_KAFKA_CONTROLLER_PORT": self.controller_port,
        }
        run_stack_sh(self.local_dir, ports, *args)

    def up(self) -> None:
        link_main_kafka_libs(self.local_dir)
        self._stack("up", "kafka")

    def down(self) -> None:
        self._stack("down")


@contextmanager
def private_kafka(local_dir: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(local_dir)
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


class TopicProbe:
    """Reads every partition of one topic, without a group: what was appended since a mark."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        self._partitions: list[TopicPartition] = []
        self._mark: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> TopicProbe:
        async with admin_client(self._bootstrap) as admin:
            [described] = await admin.describe_topics([self.topic])
        assert described.get("error_code", 0) == 0, f"topic {self.topic}: {described}"
        numbers = sorted(p["partition"] for p in described["partitions"])
        self._partitions = [TopicPartition(self.topic, p) for p in numbers]
        await self._consumer.start()
        try:
            self._consumer.assign(self._partitions)
            await self.mark()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self, *_: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(self._partitions)
        return ends

    async def mark(self) -> None:
        """From now on, ``new_count`` and ``new_records`` count from here."""
        self._mark = await self.end_offsets()

    async def mark_beginning(self) -> None:
        """Count from the start of the log (every record still retained)."""
        self._mark = await self._consumer.beginning_offsets(self._partitions)

    async def new_count(self) -> int:
        ends = await self.end_offsets()
        return sum(ends[tp] - self._mark[tp] for tp in self._partitions)

    async def new_records(self, timeout: float = 20) -> list[ConsumerRecord[Any, Any]]:
        """Every record appended since the mark (all of them: reads up to the end offsets)."""
        ends = await self.end_offsets()
        wanted = {tp: ends[tp] for tp in self._partitions if ends[tp] > self._mark[tp]}
        for tp in self._partitions:
            self._consumer.seek(tp, self._mark[tp])
        records: list[ConsumerRecord[Any, Any]] = []

        async def _behind() -> bool:
            return any([await self._consumer.position(tp) < end for tp, end in wanted.items()])

        async def _drain() -> None:
            while await _behind():
                batches = await self._consumer.getmany(*wanted, timeout_ms=200)
                for batch in batches.values():
                    records.extend(
                        r for r in batch if r.offset < wanted[TopicPartition(r.topic, r.partition)]
                    )

        await asyncio.wait_for(_drain(), timeout)
        return records


class IngestServer:
    """``python -m services.ingest`` on a free port, with the test stack's settings."""

    def __init__(self, stack: IsolatedStack, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = env.get("HOOKSTREAM_API_KEY", stack.env["HOOKSTREAM_API_KEY"])
        self.proc = ServiceProcess(
            stack, "ingest", log_dir=log_dir, HOOKSTREAM_HTTP_PORT=str(self.port), **env
        )

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"ingest exited:\n{self.proc.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"ingest did not answer /health:\n{self.proc.log()}")

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> int:
        return self.proc.stop()


@contextmanager
def running_ingest(stack: IsolatedStack, log_dir: Path, **env: str) -> Iterator[IngestServer]:
    server = IngestServer(stack, log_dir, **env)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()
