"""Attempt claims: one retry chain per delivery, however many copies of a job exist.

At-least-once leaves copies of a retry job on ``<prefix>.deliveries``: a retry scheduler
killed before its commit re-publishes what it had already published, and a dispatcher
killed before its commit sends an attempt again and publishes its follow-up twice. Each
copy used to start a chain of its own. Two chains of one delivery end on their own: one
can end in FAILURE while the other, seconds of jitter later, gets its 2xx. The delivery
then has two terminal states, which design.md §3 rules out.

A claim is one Redis key per delivery holding the attempt last made and the *source* of
the job that made it (the partition and offset it was read from). Before a retry's request
is sent (its slot and the breaker are granted), the job claims its attempt:

- no claim, or an earlier attempt's: taken, the request goes;
- the same attempt from the same source: the same record read again after a crash or a
  rebalance, so it goes (its first reading may have died before recording anything);
- the same attempt from another source, a later attempt, or a delivery already ended: a
  copy. It is dropped: no request, no row, no follow-up. Its chain goes on elsewhere.

A retry that ends the delivery (SUCCESS or FAILURE) marks it ended once its row and dead
letter are durable, so a copy still waiting on a tier cannot start over.

Claims are kept per *run* (``DeliveryJob.run``): a manual retry, a replay or a backfill
sends an ended delivery again on purpose, and its retries are not copies of the first
run's.

First attempts are not claimed: that would cost a Redis round trip and a key for every
delivery, where copies of a first attempt are rare (a dispatcher crash) and fork a chain
only when both copies fail, which the second attempt's claim then closes.

Redis is an accelerator here too: when it does not answer, the job goes (a duplicate at
worst, never a loss). A key outlives the longest wait between two attempts, jitter
included, by an hour; then a stray copy would go again, as it did before claims.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from redis.asyncio import Redis

from shared.logging import get_logger

log = get_logger("dispatcher.claims")

ENDED = "ended"

# KEYS[1] the delivery's claim; ARGV attempt, source, ttl in seconds. 1: taken, 0: a copy.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then
  if held == 'ended' then return 0 end
  local bar = string.find(held, '|', 1, true)
  local attempt = tonumber(string.sub(held, 1, bar - 1))
  local wanted = tonumber(ARGV[1])
  if attempt > wanted then return 0 end
  if attempt == wanted and string.sub(held, bar + 1) ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


def claim_ttl(schedule: tuple[timedelta, ...], jitter: float) -> int:
    """Seconds a claim is kept: the longest delay with its jitter, plus an hour."""
    longest = max(schedule, default=timedelta(0))
    return int(longest.total_seconds() * (1 + jitter)) + 3600


class AttemptClaims:
    def __init__(self, redis: Redis, topic_prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = topic_prefix
        self._ttl = ttl
        self._claim = redis.register_script(_CLAIM)

    def _key(self, delivery_id: uuid.UUID, run: str) -> str:
        key = f"{self._prefix}:claim:{delivery_id}"
        return f"{key}:{run}" if run else key

    async def take(self, delivery_id: uuid.UUID, run: str, attempt: int, source: str) -> bool:
        """May this job make ``attempt`` (True), or is it a copy of one that has (False)?"""
        try:
            taken = await self._claim(
                keys=[self._key(delivery_id, run)], args=[attempt, source, self._ttl]
            )
        except Exception as exc:  # Redis down: send (a duplicate at worst)
            log.warning("attempt claim not checked", delivery_id=str(delivery_id), error=repr(exc))
            return True
        return bool(taken)

    async def end(self, delivery_id: uuid.UUID, run: str) -> None:
        """The run has its terminal row: every copy of it still on its way is dropped."""
        try:
            await self._redis.set(self._key(delivery_id, run), ENDED, ex=self._ttl)
        except Exception as exc:
            log.warning("delivery end not marked", delivery_id=str(delivery_id), error=repr(exc))
