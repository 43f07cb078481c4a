"""Young garbage collections paced by the requests in flight and the jobs in progress.

``tune_gc`` sets the young threshold at 50,000 allocations. Against instant targets a
request's objects are freed before the next young collection, so that collection scans
little besides fetched jobs. Against slow targets thousands of requests stay open for
150 ms and more: every young collection scans the open requests allocated since the
previous one, only to move them to the next generation, and a gen-1 collection every
20 young ones scans them again. Measured in a slow ``bench targets`` run (36,000
deliveries, ~2,500 open at the peak): 26 young collections took 0.40-0.46 s and one gen-1
collection 0.14-0.17 s, against 0.27-0.29 s and none with a young threshold of 200,000.

So the threshold grows with the requests in flight, each pass of the in-flight bound's
tick: ``BASE`` plus ``PER_OPEN`` per open request, up to ``CEILING``, and the gen-1
threshold shrinks so a gen-1 collection still comes every ~``GEN1_EVERY`` allocations.

How much it grows. A young collection scans what is alive in the young generation, which
is never more than what is alive in the process: ~50 tracked objects per open request and
~35 per fetched job waiting for a slot. Past that size a higher threshold makes the
collections rarer without making them longer. ``PER_OPEN`` is several times what a
request keeps alive, so a collection comes only after the open requests were allocated
several times over. (The count is allocations minus frees, and it never drops below zero:
it climbs by the live set's swings, and by cyclic garbage.) The first pacing (60 per open
request, up to 200,000) sat at the size of the live set, so every collection still
rescanned the open requests. Measured with 108,000 jobs against slow targets
(``BENCH_TARGETS_N=108000``, the ``slow`` shape of ``bench targets``):

- 60 per open request: 13 young collections took 0.97 s, 75 ms each, and two gen-1
  collections took 0.35 s. That is 9 % of the dispatcher's CPU over the 19.6 s of load.
  The pauses shrank the in-flight bound, and 4,994-5,050 deliveries/s came out (61 and
  65 % of the instant rate in two pairs).
- 400 per open request: no collection in 17 s of load, and 6,443 deliveries/s (84 %).

From ~2,400 open requests on the threshold stays at ``CEILING``. So the young generation
holds at most ~1,000,000 objects before a collection. That bounds the cyclic garbage a
busy process carries (~150 MB at ~150 bytes an object) and the longest young pause
(~0.4 s at the 0.37 µs an object the collections above took). Such a pause
comes only with thousands of requests open, when attempts take long enough that the
in-flight bound tolerates such lag (see ``limits.LoopLimit``).

Jobs in progress count too (``PER_JOB`` each: the consumer's tasks, waiting for a slot,
open, or being recorded). A backlog against instant targets holds few requests open (the
in-flight bound stays at 100-300) but 10,000-17,000 fetched jobs waiting for a slot, each
a task and its coroutines that live for seconds: paced by the open requests alone, the
threshold stayed near ``BASE`` and every young collection scanned jobs that were still
waiting, and a gen-1 one all of them (250-370 ms). Measured in alternating runs of the
``instant`` and ``slow`` shapes of ``bench targets`` (two of each, one dispatcher each):
instant targets 127-129 → 110 µs of CPU per delivery, the longest stall of the loop
233-249 → 79-88 ms; slow targets unchanged (131-137 µs before, 136-138 after), their open
requests already held the threshold up. With a light load both counts are small and the threshold
stays near ``BASE``: the latency it was tuned for holds.
"""

from __future__ import annotations

import gc

BASE = 50_000
PER_OPEN = 400
# A waiting job keeps ~35 objects alive against an open request's ~50, for longer.
PER_JOB = 200
CEILING = 1_000_000
GEN1_EVERY = 1_000_000
# Thresholds move only when the target moved this much: no churn from a tick's noise.
HYSTERESIS = 0.1


def thresholds(in_flight: int, full: int, jobs: int = 0) -> tuple[int, int, int]:
    """The (young, gen-1, gen-2) thresholds for ``in_flight`` open requests and ``jobs``
    in progress, whichever keeps more alive; ``full`` is the gen-2 threshold, which does
    not move."""
    alive = max(PER_OPEN * in_flight, PER_JOB * jobs, 0)
    young = min(BASE + alive, CEILING)
    return young, max(GEN1_EVERY // young, 1), full


def pace(in_flight: int, jobs: int = 0) -> tuple[int, int, int]:
    """Set this process's thresholds for ``in_flight`` open requests and ``jobs`` in
    progress, unless they are within ``HYSTERESIS`` of what is set; returns what is set."""
    current = gc.get_threshold()
    wanted = thresholds(in_flight, current[2], jobs)
    if abs(wanted[0] - current[0]) > HYSTERESIS * current[0]:
        gc.set_threshold(*wanted)
        return wanted
    return current
