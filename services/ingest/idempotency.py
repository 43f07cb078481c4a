"""``Idempotency-Key`` on the ingest routes: a repeat returns the first answer, publishes nothing.

Redis holds one key per (prefix, scope, Idempotency-Key):

1. ``SET key PENDING NX EX <in-flight ttl>`` claims it. Only the claimant goes on to publish.
2. The claimant stores its answer with ``SET key <answer> EX <idempotency_ttl>``, or deletes
   the claim when it failed (a 4xx or 503 must not stick: the retry should be judged anew).
3. A repeat that finds an answer returns it; one that finds ``PENDING`` gets 409 with
   Retry-After (the first request is still waiting for the broker), as the IETF
   Idempotency-Key draft says.

A fingerprint of the body and event type is stored with the answer: the same key with a
different payload is a client bug and gets 422 instead of a wrong replay.

Redis is an accelerator (design §8): when it is down, ingest goes on without dedupe and
logs a warning at most every few seconds, and stops asking Redis for a short while so a
dead Redis costs one timeout per back-off window, not one per request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.errors import Conflict, Unprocessable
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("ingest.idempotency")

KEY_PREFIX = "hookstream:idem:"
PENDING = b"PENDING"
# How long a claim may stay PENDING if its process dies before answering: the publish
# bound plus slack. After that a retry may publish again (at-least-once, never lost).
_PENDING_SLACK_SECONDS = 30
# After a Redis error, skip Redis for this long (each request would otherwise wait for
# the 0.5 s socket timeout of shared.redis).
_REDIS_BACKOFF_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to process a request with this key. ``key`` is None when dedupe is off."""

    key: str | None


def fingerprint(event_type: str, body: bytes) -> str:
    kind = event_type.encode()
    digest = hashlib.blake2b(str(len(kind)).encode() + b":" + kind + body, digest_size=16)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"{KEY_PREFIX}{settings.topic_prefix}:"
        self._ttl = max(1, int(settings.idempotency_ttl.total_seconds()))
        self._pending_ttl = int(settings.publish_timeout) + _PENDING_SLACK_SECONDS
        self._skip_until = 0.0

    def redis_key(self, scope: str, idempotency_key: str) -> str:
        return f"{self._prefix}{scope}:{idempotency_key}"

    async def claim(self, scope: str, idempotency_key: str, print_: str) -> Claim | StoredAnswer:
        """Claim the key, or return the stored first answer. Raises Conflict while in flight."""
        key = self.redis_key(scope, idempotency_key)
        if time.monotonic() < self._skip_until:
            return Claim(None)
        try:
            # Two rounds: the first request may finish and release between our SET and GET.
            for _ in range(2):
                if await self._redis.set(key, PENDING, nx=True, ex=self._pending_ttl):
                    return Claim(key)
                stored = await self._redis.get(key)
                if stored is None:
                    continue
                if stored == PENDING:
                    raise Conflict(
                        "a request with this Idempotency-Key is still in progress",
                        headers={"Retry-After": "1"},
                    )
                return _decode(stored, print_)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return Claim(None)
        raise Conflict(
            "a request with this Idempotency-Key is being retried concurrently",
            headers={"Retry-After": "1"},
        )

    async def store(self, claim: Claim, answer: StoredAnswer, print_: str) -> None:
        if claim.key is None:
            return
        value = orjson.dumps({"s": answer.status_code, "f": print_, "b": answer.body.decode()})
        try:
            await self._redis.set(claim.key, value, ex=self._ttl)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)

    async def release(self, claim: Claim) -> None:
        if claim.key is None:
            return
        try:
            await self._redis.delete(claim.key)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now >= self._skip_until:
            log.warning(
                "redis unavailable: idempotency keys are not checked",
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=_REDIS_BACKOFF_SECONDS,
            )
        self._skip_until = now + _REDIS_BACKOFF_SECONDS


def _decode(stored: bytes | str, print_: str) -> StoredAnswer:
    data = orjson.loads(stored)
    if data["f"] != print_:
        raise Unprocessable(
            ["header", "idempotency-key"],
            "this Idempotency-Key was used with a different request body or event type",
        )
    return StoredAnswer(status_code=int(data["s"]), body=str(data["b"]).encode())
