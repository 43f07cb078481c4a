"""The overview's chart: attempts per minute by outcome, drawn as inline SVG on the server.

Pure geometry: counts in, rectangles and axis ticks out; the template only prints them.
No chart library, no script, nothing fetched at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.models import AttemptStatus

# Bottom to top in each stacked bar.
OUTCOMES = (AttemptStatus.SUCCESS, AttemptStatus.FAILED_ATTEMPT, AttemptStatus.FAILURE)
WIDTH, HEIGHT = 720.0, 220.0
LEFT, RIGHT, TOP, BOTTOM = 48.0, 24.0, 10.0, 24.0  # room for the axis labels
BAR_FILL = 0.8  # of a minute's slot; the rest is the gap between bars


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: str
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: float
    height: float
    plot_left: float
    plot_right: float
    plot_bottom: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    totals: dict[str, int]


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 x 10^k at or above ``value`` (at least 1): a round axis top."""
    if value <= 1:
        return 1
    power: int = 10 ** int(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def per_minute_chart(
    counts: Iterable[tuple[datetime, str, int]], first_minute: datetime, minutes: int
) -> Chart:
    """Stacked bars, one slot per minute from ``first_minute``; counts outside are ignored."""
    grid: dict[int, dict[str, int]] = {}
    totals = {o.value: 0 for o in OUTCOMES}
    for minute, outcome, n in counts:
        slot = round((minute - first_minute) / timedelta(minutes=1))
        if 0 <= slot < minutes and outcome in totals:
            grid.setdefault(slot, {})[outcome] = n
            totals[outcome] += n
    top = nice_ceiling(max((sum(c.values()) for c in grid.values()), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot_w = plot_w / minutes
    bars: list[Bar] = []
    for slot, by_outcome in sorted(grid.items()):
        at = first_minute + timedelta(minutes=slot)
        base = HEIGHT - BOTTOM
        for outcome in OUTCOMES:
            n = by_outcome.get(outcome.value, 0)
            if not n:
                continue
            h = plot_h * n / top
            base -= h
            bars.append(
                Bar(
                    x=round(LEFT + slot * slot_w + slot_w * (1 - BAR_FILL) / 2, 2),
                    y=round(base, 2),
                    width=round(slot_w * BAR_FILL, 2),
                    height=round(h, 2),
                    outcome=outcome.value,
                    label=f"{at:%H:%M} UTC: {n} {outcome.value}",
                )
            )
    # Counts are whole numbers: no half-way line when the half would be a fraction.
    steps = (0, top // 2, top) if top % 2 == 0 else (0, top)
    y_ticks = [Tick(round(HEIGHT - BOTTOM - plot_h * v / top, 2), str(v)) for v in steps]
    x_ticks = [
        Tick(round(LEFT + slot * slot_w, 2), f"{first_minute + timedelta(minutes=slot):%H:%M}")
        for slot in range(0, minutes + 1, max(minutes // 6, 1))
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_right=WIDTH - RIGHT,
        plot_bottom=HEIGHT - BOTTOM,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        totals=totals,
    )
