"""Payload filters: JSON conditions on an event's body, compiled once into a predicate.

A filter is a JSON object. Each key is a dotted path into the body (``data.amount``,
``items.0.sku``: object keys, and list indexes as numbers) and each value is either a
literal, which the value at that path must equal, or an operator object::

    {"type": "invoice.paid", "data.amount": {"$gte": 100}, "data.currency": {"$in": ["EUR", "USD"]},
     "$or": [{"data.country": "FR"}, {"data.vip": true}]}

Every key of an object must hold. Operators: ``$eq $ne $gt $gte $lt $lte $in $nin
$exists`` on a path, ``$or`` and ``$and`` (lists of filter objects) at any level. A key
that starts with ``$`` is always an operator: an unknown one is refused, never compared
as a literal. Semantics follow MongoDB's, which most users know: a missing path equals
nothing, ``$ne`` and ``$nin`` hold for it, ``$exists`` says whether it is there; order
comparisons only hold between two numbers or two strings (``true`` is not a number); a
body that is not a JSON object matches no filter.

``compile_filter`` validates (``FilterError`` names the offending place, for a 422) and
returns a predicate; callers compile once per subscription version, not per event.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]

MAX_CONDITIONS = 50
MAX_DEPTH = 5
MAX_BYTES = 4096

_MISSING = object()
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_FIELD_OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *_ORDER}
_LOGICAL = {"$or", "$and"}


class FilterError(ValueError):
    """A filter that cannot be compiled; ``where`` is the path to the offending part."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


def compile_filter(spec: Any) -> Predicate:
    """The predicate for ``spec`` (a decoded JSON object); raises FilterError."""
    if not isinstance(spec, dict):
        raise FilterError("", "must be a JSON object")
    if len(json.dumps(spec, separators=(",", ":")).encode()) > MAX_BYTES:
        raise FilterError("", f"must be at most {MAX_BYTES} bytes as JSON")
    budget = [MAX_CONDITIONS]
    test = _object(spec, "", 0, budget)
    return lambda body: isinstance(body, dict) and test(body)


def _count(budget: list[int], where: str) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise FilterError(where, f"more than {MAX_CONDITIONS} conditions")


def _object(spec: dict[str, Any], where: str, depth: int, budget: list[int]) -> Predicate:
    if depth > MAX_DEPTH:
        raise FilterError(where, f"nested deeper than {MAX_DEPTH} levels")
    tests: list[Predicate] = []
    for key, value in spec.items():
        at = f"{where}.{key}" if where else key
        if key.startswith("$"):
            if key not in _LOGICAL:
                raise FilterError(at, f"unknown operator {key!r} here (use $or or $and)")
            tests.append(_logical(key, value, at, depth, budget))
        else:
            if not key or any(part == "" for part in key.split(".")):
                raise FilterError(at, "a path must not have empty parts")
            tests.append(_field(key.split("."), value, at, budget))
    return lambda body: all(test(body) for test in tests)


def _logical(op: str, value: Any, where: str, depth: int, budget: list[int]) -> Predicate:
    if not isinstance(value, list) or not value:
        raise FilterError(where, f"{op} takes a non-empty list of filter objects")
    parts = []
    for n, item in enumerate(value):
        if not isinstance(item, dict):
            raise FilterError(f"{where}.{n}", "must be a filter object")
        parts.append(_object(item, f"{where}.{n}", depth + 1, budget))
    if op == "$or":
        return lambda body: any(part(body) for part in parts)
    return lambda body: all(part(body) for part in parts)


def _field(path: list[str], value: Any, where: str, budget: list[int]) -> Predicate:
    if isinstance(value, dict) and any(k.startswith("$") for k in value):
        if not all(k.startswith("$") for k in value):
            raise FilterError(where, "mixes operators and fields: use one or the other")
        tests = [_operator(op, arg, f"{where}.{op}", budget) for op, arg in value.items()]
        return lambda body: all(test(_lookup(body, path)) for test in tests)
    _count(budget, where)
    _literal(value, where)
    return lambda body: _equal(_lookup(body, path), value)


def _operator(op: str, arg: Any, where: str, budget: list[int]) -> Callable[[Any], bool]:
    if op not in _FIELD_OPERATORS:
        raise FilterError(where, f"unknown operator {op!r}")
    _count(budget, where)
    if op == "$exists":
        if not isinstance(arg, bool):
            raise FilterError(where, "$exists takes true or false")
        return lambda found: (found is not _MISSING) is arg
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise FilterError(where, f"{op} takes a list")
        for n, item in enumerate(arg):
            _literal(item, f"{where}.{n}")
        if op == "$in":
            return lambda found: any(_equal(found, item) for item in arg)
        return lambda found: not any(_equal(found, item) for item in arg)
    _literal(arg, where)
    if op == "$eq":
        return lambda found: _equal(found, arg)
    if op == "$ne":
        return lambda found: not _equal(found, arg)
    if not (_is_number(arg) or isinstance(arg, str)):
        raise FilterError(where, f"{op} compares numbers or strings")
    compare = _ORDER[op]
    return lambda found: _comparable(found, arg) and compare(found, arg)


def _literal(value: Any, where: str) -> None:
    """A JSON value with no operator inside (``$`` keys in a literal object are refused)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$"):
                raise FilterError(f"{where}.{key}", f"unknown operator {key!r} here")
            _literal(item, f"{where}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _literal(item, f"{where}.{n}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise FilterError(where, "numbers must be finite")


def _lookup(body: Any, path: list[str]) -> Any:
    here = body
    for part in path:
        if isinstance(here, dict):
            here = here.get(part, _MISSING)
        elif isinstance(here, list) and part.isdigit():
            index = int(part)
            here = here[index] if index < len(here) else _MISSING
        else:
            return _MISSING
        if here is _MISSING:
            return _MISSING
    return here


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparable(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true is not 1 (Python says it is)."""
    if a is _MISSING:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)
