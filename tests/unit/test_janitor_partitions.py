"""Slot arithmetic of the janitor: which ranges exist, which expire, which are missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.janitor.cache_keys import KeyCount, _glob_escape
from services.janitor.housekeeping import JanitorReport
from services.janitor.partitions import (
    Partition,
    align_down,
    expired,
    missing_ranges,
    partition_name,
    unique_name,
)
from services.janitor.retention import TableReport, check_width, slots_ahead

H = timedelta(hours=1)
T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


def part(lo: datetime | None, hi: datetime | None, name: str = "p") -> Partition:
    return Partition(name, lo, hi)


def test_align_down_is_epoch_aligned_whatever_the_timezone() -> None:
    ts = datetime(2026, 11, 29, 14, 37, 5, tzinfo=UTC)
    assert align_down(ts, H) == datetime(2026, 11, 29, 14, tzinfo=UTC)
    assert align_down(ts, 6 * H) == datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert align_down(ts.astimezone(ZoneInfo("Asia/Kolkata")), 6 * H) == datetime(
        2026, 11, 29, 12, tzinfo=UTC
    )
    assert align_down(T0, H) == T0


def test_partition_name_matches_the_sql_function_scheme() -> None:
    assert partition_name("events", T0 + 13 * H) == "events_p20261129_130000"


def test_unique_name_avoids_taken_names() -> None:
    taken = {"events_p20261129_000000"}
    assert unique_name("events", T0, taken) == "events_p20261129_000000_2"
    assert unique_name("events", T0, taken) == "events_p20261129_000000_3"


def test_expired_uses_upper_bound_and_skips_default_and_maxvalue() -> None:
    cutoff = T0 + 10 * H
    parts = [
        part(T0 + 8 * H, T0 + 9 * H, "old"),
        part(T0 + 9 * H, T0 + 10 * H, "edge"),  # upper == cutoff: every row is older
        part(T0 + 10 * H, T0 + 11 * H, "live"),
        part(None, T0 + H, "minvalue"),
        part(T0, None, "maxvalue"),
        Partition("default", None, None, is_default=True),
    ]
    assert [p.name for p in expired(parts, cutoff)] == ["old", "edge", "minvalue"]


def test_missing_ranges_with_nothing_existing_is_every_slot() -> None:
    assert missing_ranges([], [T0, T0 + H], H) == [(T0, T0 + H), (T0 + H, T0 + 2 * H)]


def test_missing_ranges_skips_covered_slots_and_duplicates() -> None:
    existing = [part(T0, T0 + H)]
    assert missing_ranges(existing, [T0, T0 + H, T0 + H], H) == [(T0 + H, T0 + 2 * H)]


def test_missing_ranges_clips_around_a_wider_older_partition() -> None:
    # A 6 h partition from before the width changed covers 02:00-08:00.
    existing = [part(T0 + 2 * H, T0 + 8 * H)]
    slots = [T0 + i * H for i in range(10)]
    assert missing_ranges(existing, slots, H) == [
        (T0, T0 + H),
        (T0 + H, T0 + 2 * H),
        (T0 + 8 * H, T0 + 9 * H),
        (T0 + 9 * H, T0 + 10 * H),
    ]


def test_missing_ranges_fills_only_the_uncovered_pieces_of_a_slot() -> None:
    width = 6 * H
    existing = [part(T0 + 2 * H, T0 + 3 * H), part(T0 + 4 * H, T0 + 5 * H)]
    assert missing_ranges(existing, [T0], width) == [
        (T0, T0 + 2 * H),
        (T0 + 3 * H, T0 + 4 * H),
        (T0 + 5 * H, T0 + 6 * H),
    ]


def test_missing_ranges_respects_unbounded_partitions() -> None:
    assert missing_ranges([part(None, T0 + H)], [T0, T0 + H], H) == [(T0 + H, T0 + 2 * H)]
    assert missing_ranges([part(T0, None)], [T0, T0 + 5 * H], H) == []


def test_slots_ahead_runs_from_one_width_ago_to_the_horizon() -> None:
    now = T0 + 10 * H + timedelta(minutes=20)
    slots = slots_ahead(now, H, 3, cutoff=now - 2 * H)
    assert slots == [T0 + 9 * H, T0 + 10 * H, T0 + 11 * H, T0 + 12 * H, T0 + 13 * H]


def test_slots_ahead_skips_slots_already_past_retention() -> None:
    now = T0 + 10 * H
    # Retention shorter than a width: the slot that ended at the cutoff is not created.
    assert slots_ahead(now, 6 * H, 1, cutoff=now - H) == [T0 + 6 * H, T0 + 12 * H]


@pytest.mark.parametrize("width", [timedelta(seconds=30), timedelta(minutes=1, milliseconds=5)])
def test_check_width_refuses_tiny_or_fractional_widths(width: timedelta) -> None:
    with pytest.raises(ValueError, match="partition_width"):
        check_width(width)


def test_glob_escape_makes_prefix_literal() -> None:
    assert _glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def test_report_is_json_ready() -> None:
    report = JanitorReport(
        skipped=False,
        now=T0,
        retention_hours=2,
        tables={"events": TableReport(created=["events_p1"], default_moved=2)},
        redis_keys={"idempotency": KeyCount(3, complete=True)},
        seconds=0.123456,
    )
    decoded = json.loads(json.dumps(report.as_dict()))
    assert decoded["tables"]["events"]["created"] == ["events_p1"]
    assert decoded["tables"]["events"]["default_moved"] == 2
    assert decoded["redis_keys"] == {"idempotency": {"count": 3, "complete": True}}
    assert decoded["now"] == "2026-11-29T00:00:00+00:00"
    assert decoded["seconds"] == 0.1235
