"""Payload filters: a table of filters, bodies and verdicts, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from shared.filters import MAX_CONDITIONS, FilterError, compile_filter

BODY = {
    "type": "invoice.paid",
    "data": {"amount": 150, "currency": "EUR", "vip": False, "tags": ["a", "b"], "ratio": 1.0},
    "items": [{"sku": "X-1", "qty": 2}, {"sku": "Y-9", "qty": 1}],
    "note": None,
}

CASES: list[tuple[dict[str, Any], bool]] = [
    ({}, True),
    ({"type": "invoice.paid"}, True),
    ({"type": "invoice.failed"}, False),
    ({"data.amount": 150}, True),
    ({"data.amount": 150.0}, True),  # JSON numbers: 150 equals 150.0
    ({"data.ratio": 1}, True),
    ({"data.vip": False}, True),
    ({"data.vip": 0}, False),  # false is not 0
    ({"data.amount": True}, False),
    ({"data.amount": "150"}, False),
    ({"items.0.sku": "X-1"}, True),
    ({"items.1.sku": "X-1"}, False),
    ({"items.5.sku": "X-1"}, False),  # past the end: missing
    ({"data.tags": ["a", "b"]}, True),
    ({"data.tags": ["b", "a"]}, False),
    ({"data.tags.1": "b"}, True),
    ({"note": None}, True),
    ({"missing": None}, False),  # missing is not null
    ({"data.amount": {"$gt": 100}}, True),
    ({"data.amount": {"$gt": 150}}, False),
    ({"data.amount": {"$gte": 150, "$lte": 150}}, True),
    ({"data.amount": {"$lt": "200"}}, False),  # number vs string: no order
    ({"data.currency": {"$gt": "A"}}, True),
    ({"data.vip": {"$lt": 1}}, False),  # booleans are not numbers
    ({"missing": {"$gt": 0}}, False),
    ({"data.currency": {"$in": ["EUR", "USD"]}}, True),
    ({"data.currency": {"$in": ["GBP"]}}, False),
    ({"data.currency": {"$nin": ["GBP"]}}, True),
    ({"missing": {"$nin": ["GBP"]}}, True),  # as MongoDB: absent is not in the list
    ({"missing": {"$in": [None]}}, False),
    ({"data.currency": {"$ne": "EUR"}}, False),
    ({"missing": {"$ne": "EUR"}}, True),
    ({"data.currency": {"$eq": "EUR"}}, True),
    ({"note": {"$exists": True}}, True),  # present, even as null
    ({"missing": {"$exists": False}}, True),
    ({"data.amount.deeper": {"$exists": True}}, False),
    ({"$or": [{"type": "x"}, {"data.amount": {"$gt": 100}}]}, True),
    ({"$or": [{"type": "x"}, {"data.amount": {"$gt": 1000}}]}, False),
    ({"$and": [{"type": "invoice.paid"}, {"items.0.qty": 2}]}, True),
    ({"type": "invoice.paid", "$or": [{"data.vip": True}, {"data.currency": "USD"}]}, False),
    (
        {
            "$or": [
                {
                    "$and": [
                        {"data.amount": {"$gt": 100}},
                        {"$or": [{"data.vip": True}, {"items.1.qty": 1}]},
                    ]
                }
            ]
        },
        True,
    ),
]


@pytest.mark.parametrize(("spec", "verdict"), CASES)
def test_table(spec: dict[str, Any], verdict: bool) -> None:
    assert compile_filter(spec)(BODY) is verdict


@pytest.mark.parametrize("body", [[1, 2], "text", 42, None, True])
def test_a_body_that_is_not_an_object_never_matches(body: Any) -> None:
    assert compile_filter({})(body) is False
    assert compile_filter({"missing": {"$exists": False}})(body) is False


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"$bogus": 1}, "$bogus"),
        ({"data.amount": {"$bogus": 1}}, "data.amount.$bogus"),
        ({"data.amount": {"$gt": 1, "x": 2}}, "data.amount"),
        ({"data": {"nested": {"$gt": 1}}}, "data.nested.$gt"),
        ({"data.amount": {"$in": 5}}, "data.amount.$in"),
        ({"data.amount": {"$exists": 1}}, "data.amount.$exists"),
        ({"data.amount": {"$gt": [1]}}, "data.amount.$gt"),
        ({"data.amount": {"$gt": None}}, "data.amount.$gt"),
        ({"$or": []}, "$or"),
        ({"$or": [1]}, "$or.0"),
        ({"a..b": 1}, "a..b"),
        ({"": 1}, ""),
    ],
)
def test_what_is_refused_names_its_place(spec: dict[str, Any], where: str) -> None:
    with pytest.raises(FilterError) as refused:
        compile_filter(spec)
    assert refused.value.where == where


def test_bounds() -> None:
    compile_filter({f"k{n}": n for n in range(MAX_CONDITIONS)})
    with pytest.raises(FilterError, match="conditions"):
        compile_filter({f"k{n}": n for n in range(MAX_CONDITIONS + 1)})
    deep: dict[str, Any] = {"a": 1}
    for _ in range(5):
        deep = {"$or": [deep]}
    compile_filter(deep)
    with pytest.raises(FilterError, match="deeper"):
        compile_filter({"$and": [deep]})
    with pytest.raises(FilterError, match="bytes"):
        compile_filter({"k": "v" * 5000})
    with pytest.raises(FilterError, match="object"):
        compile_filter([{"a": 1}])


def test_numbers_past_64_bits_compile_and_compare() -> None:
    big = -9223372036854775809  # past int64: orjson would refuse to measure it
    assert compile_filter({"n": {"$lt": big + 1}})({"n": big}) is True
