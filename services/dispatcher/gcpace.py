"""Young garbage collections paced by the requests in flight.

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
A young collection of 200,000 objects takes ~45 ms; it only comes with thousands of
requests open, when attempts take long enough that the in-flight bound tolerates such
lag (see ``limits.LoopLimit``). With few requests open (light load, instant targets)
nothing changes: the threshold stays at ``BASE``, so the latency it was tuned for holds.
"""

from __future__ import annotations

import gc

BASE = 50_000
PER_OPEN = 60
CEILING = 200_000
GEN1_EVERY = 1_000_000
# Thresholds move only when the target moved this much: no churn from a tick's noise.
HYSTERESIS = 0.1


def thresholds(in_flight: int, full: int) -> tuple[int, int, int]:
    """The (young, gen-1, gen-2) thresholds for ``in_flight`` open requests; ``full`` is
    the gen-2 threshold, which does not move."""
    young = min(BASE + PER_OPEN * max(in_flight, 0), CEILING)
    return young, max(GEN1_EVERY // young, 1), full


def pace(in_flight: int) -> tuple[int, int, int]:
    """Set this process's thresholds for ``in_flight`` open requests, unless they are
    within ``HYSTERESIS`` of what is set; returns what is set."""
    current = gc.get_threshold()
    wanted = thresholds(in_flight, current[2])
    if abs(wanted[0] - current[0]) > HYSTERESIS * current[0]:
        gc.set_threshold(*wanted)
        return wanted
    return current
