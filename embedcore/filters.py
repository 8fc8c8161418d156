"""Metadata filters: one JSON language, parsed, validated and evaluated here for the server's
``Search`` and the edge client's local search alike (so both keep the same documents).

Grammar (a JSON object; every key of an object must hold, so several keys are an implicit AND)::

    filter  := { clause, ... }                    at least one clause
    clause  := "and": [filter, ...]               every filter holds (at least one)
             | "or":  [filter, ...]               at least one holds (at least one)
             | "not": filter                      the filter does not hold
             | PATH: SCALAR                        equality, as {"eq": SCALAR}
             | PATH: { op, ... }                  every operator holds (at least one)
    op      := "eq": SCALAR                       equal (same JSON type: 1 == 1.0, true != 1)
             | "in": [SCALAR, ...]                equal to one of 1 to 1024 values
             | "gt" | "gte" | "lt" | "lte": NUMBER   numeric range
             | "gt" | "gte" | "lt" | "lte": STRING   date range: ISO-8601 date or date-time
             | "exists": true | false              present and not null (or not)
    PATH    := field names joined by "." into nested objects ("source.name"); "and", "or" and
               "not" are the combinators, so a top-level field of those names cannot be filtered
    SCALAR  := a string, a finite number or true/false (null: use "exists")

Matching: a missing field or a null matches no comparison (``{"not": ...}`` of one does). A
field holding a list matches a comparison when any of its elements does (``{"tags": "a"}``
matches ``"tags": ["a", "b"]``). Ranges compare numbers with numbers; a string bound is read as
an ISO-8601 date-time (``datetime.fromisoformat``: ``2020-01-31``, ``2020-01-31T12:00:00Z``,
``2020-01-31T12:00:00+02:00``) and compared with stored strings read the same way, as instants:
a date or a time without an offset (naive) is taken as UTC, so naive and aware values compare
(``2020-01-31T12:00:00`` equals ``2020-01-31T12:00:00Z`` and ``2020-01-31T14:00:00+02:00``). A
stored value of another type, or a string that is no date-time, is outside every range. All
bounds of one field's range must be of one kind (numbers or dates).

Errors: :class:`FilterError` (a ``ValueError``) whose ``path`` names the offending part the
way a person would point at it: ``and[1].year.gte``; its message repeats it.

Evaluation: :meth:`Filter.matches` on one metadata dict, :meth:`Filter.mask` on a
:class:`MetadataTable` (many documents at once: each field's column is extracted once per table
and split by JSON type into numpy arrays, so a query costs a few vectorized comparisons; a
column holding lists is evaluated value by value with the per-document tests).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = [
    "MAX_FILTER_CHARS",
    "Filter",
    "FilterError",
    "MetadataTable",
    "parse_filter",
]

MAX_FILTER_CHARS = 65_536  # the filter's JSON text, in characters
MAX_DEPTH = 32  # nesting of and / or / not
MAX_IN_VALUES = 1024
COMBINATORS = ("and", "or", "not")
RANGES = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "in", *RANGES, "exists")

_MISSING = object()


class FilterError(ValueError):
    """A malformed filter; ``path`` names the offending part (``and[1].year.gte``; "" for the
    whole filter)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# -- the per-value tests ------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(stored: Any, wanted: Any) -> bool:
    """JSON equality of two scalars: same type (numbers with numbers), same value."""
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored is wanted
    if _is_number(wanted):
        return _is_number(stored) and stored == wanted
    return isinstance(stored, str) and stored == wanted


def _one_of(stored: Any, choices: tuple[Any, ...]) -> bool:
    return any(_same(stored, c) for c in choices)


@functools.lru_cache(maxsize=65_536)
def instant(text: str) -> float | None:
    """Seconds since the epoch of an ISO-8601 date or date-time (naive: UTC); None when it is
    not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _range_test(bounds: dict[str, float], dates: bool) -> Callable[[Any], bool]:
    gt, gte, lt, lte = (bounds.get(k) for k in RANGES)

    def test(value: Any) -> bool:
        if dates:
            if not isinstance(value, str):
                return False
            moment = instant(value)
            if moment is None:
                return False
            x = moment
        elif _is_number(value):
            x = float(value)
        else:
            return False
        return (
            (gt is None or x > gt)
            and (gte is None or x >= gte)
            and (lt is None or x < lt)
            and (lte is None or x <= lte)
        )

    return test


# -- the parsed filter ---------------------------------------------------------------------------


class Filter:
    """A parsed, valid filter (see the module docstring); build one with :func:`parse_filter`."""

    def matches(self, metadata: dict[str, Any]) -> bool:
        """Whether one document's metadata (a JSON object as a dict) passes."""
        raise NotImplementedError

    def mask(self, table: MetadataTable) -> np.ndarray:
        """(len(table),) bool: which of the table's documents pass."""
        raise NotImplementedError


@dataclass(frozen=True)
class _All(Filter):
    parts: tuple[Filter, ...]

    def matches(self, metadata: dict[str, Any]) -> bool:
        return all(p.matches(metadata) for p in self.parts)

    def mask(self, table: MetadataTable) -> np.ndarray:
        out = np.ones(len(table), dtype=bool)
        for part in self.parts:
            out &= part.mask(table)
        return out


@dataclass(frozen=True)
class _Any(Filter):
    parts: tuple[Filter, ...]

    def matches(self, metadata: dict[str, Any]) -> bool:
        return any(p.matches(metadata) for p in self.parts)

    def mask(self, table: MetadataTable) -> np.ndarray:
        out = np.zeros(len(table), dtype=bool)
        for part in self.parts:
            out |= part.mask(table)
        return out


@dataclass(frozen=True)
class _Not(Filter):
    part: Filter

    def matches(self, metadata: dict[str, Any]) -> bool:
        return not self.part.matches(metadata)

    def mask(self, table: MetadataTable) -> np.ndarray:
        return ~self.part.mask(table)


@dataclass(frozen=True)
class _Field(Filter):
    """Tests on one field (a path into nested objects). ``tests`` are the per-value form of
    ``equal`` and the range (used on one document, and on columns holding lists); a column of
    scalars is evaluated with numpy from the same description."""

    keys: tuple[str, ...]
    tests: tuple[Callable[[Any], bool], ...] = ()  # every one holds for one element ...
    exists: bool | None = None
    equal: tuple[tuple[Any, ...], ...] = ()  # each group: equal to one of its values (eq, in)
    bounds: tuple[tuple[str, float], ...] = ()  # (gt | gte | lt | lte, bound)
    dates: bool = False  # the bounds are instants (seconds since the epoch)

    def value_matches(self, value: Any) -> bool:
        present = value is not _MISSING and value is not None
        if self.exists is not None and present != self.exists:
            return False
        if not self.tests:
            return True
        if not present:
            return False
        if isinstance(value, list):  # ... of a list
            return any(self._element(v) for v in value)
        return self._element(value)

    def _element(self, value: Any) -> bool:
        if isinstance(value, dict | list):
            return False
        return all(test(value) for test in self.tests)

    def matches(self, metadata: dict[str, Any]) -> bool:
        return self.value_matches(lookup(metadata, self.keys))

    def mask(self, table: MetadataTable) -> np.ndarray:
        typed = table.typed(self.keys)
        if typed is None:  # a column holding lists: any element may match
            column = table.column(self.keys)
            return np.fromiter((self.value_matches(v) for v in column), dtype=bool, count=len(column))
        out = typed.present.copy() if self.tests else np.ones(len(table), dtype=bool)
        if self.exists is not None:
            out &= typed.present == self.exists
        for group in self.equal:
            any_of = np.zeros(len(table), dtype=bool)
            for wanted in group:
                any_of |= typed.equal(wanted)
            out &= any_of
        if self.bounds:
            values = typed.instants() if self.dates else typed.numbers
            with np.errstate(invalid="ignore"):  # NaN: not a number / not a date, outside
                for op, bound in self.bounds:
                    out &= _COMPARE[op](values, bound)
        return out


_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "gt": np.greater,
    "gte": np.greater_equal,
    "lt": np.less,
    "lte": np.less_equal,
}


@dataclass
class _Typed:
    """One field's column of scalars by JSON type, for numpy evaluation: present (not missing,
    not null); numbers (NaN where not a number; booleans are not numbers); strings (None where
    not a string); booleans (1 true, 0 false, -1 not a boolean)."""

    present: np.ndarray
    numbers: np.ndarray
    strings: np.ndarray
    booleans: np.ndarray
    _instants: np.ndarray | None = None

    def equal(self, wanted: Any) -> np.ndarray:
        if isinstance(wanted, bool):
            return np.asarray(self.booleans == int(wanted))
        if _is_number(wanted):
            return np.asarray(self.numbers == float(wanted))
        return np.asarray(self.strings == wanted, dtype=bool)

    def instants(self) -> np.ndarray:
        """Seconds since the epoch of the ISO-8601 strings (NaN elsewhere), made on first use."""
        if self._instants is None:
            out = np.full(len(self.strings), np.nan)
            for i, text in enumerate(self.strings):
                if text is not None:
                    moment = instant(text)
                    if moment is not None:
                        out[i] = moment
            self._instants = out
        return self._instants


def lookup(metadata: Any, keys: Sequence[str]) -> Any:
    """The value at a path of nested objects, or the private missing marker."""
    value = metadata
    for key in keys:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


@dataclass
class MetadataTable:
    """The metadata of many documents (row i: ``ids[i]``, ``metadata[i]``) with each field's
    column extracted once and kept: build one per collection version and reuse it across
    queries."""

    ids: list[str]
    metadata: list[dict[str, Any]]
    _columns: dict[tuple[str, ...], list[Any]] = field(default_factory=dict, repr=False)
    _typed: dict[tuple[str, ...], _Typed | None] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, keys: tuple[str, ...]) -> list[Any]:
        """The field's value in every document (a private marker where it is missing)."""
        found = self._columns.get(keys)
        if found is None:
            found = [lookup(m, keys) for m in self.metadata]
            self._columns[keys] = found
        return found

    def typed(self, keys: tuple[str, ...]) -> _Typed | None:
        """The field's column split by JSON type (see :class:`_Typed`), made once; None when
        some document holds a list there (evaluated value by value)."""
        if keys in self._typed:
            return self._typed[keys]
        column = self.column(keys)
        n = len(column)
        present = np.zeros(n, dtype=bool)
        numbers = np.full(n, np.nan)
        strings = np.full(n, None, dtype=object)
        booleans = np.full(n, -1, dtype=np.int8)
        typed: _Typed | None = _Typed(present, numbers, strings, booleans)
        for i, value in enumerate(column):
            if value is _MISSING or value is None:
                continue
            present[i] = True
            if isinstance(value, bool):
                booleans[i] = int(value)
            elif isinstance(value, int | float):
                numbers[i] = value
            elif isinstance(value, str):
                strings[i] = value
            elif isinstance(value, list):
                typed = None
                break
        self._typed[keys] = typed
        return typed


# -- parsing -------------------------------------------------------------------------------------


def parse_filter(text: str) -> Filter:
    """The filter a JSON text states; FilterError naming the offending part otherwise."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"is {len(text)} characters long; at most {MAX_FILTER_CHARS}")

    def refuse_constant(name: str) -> Any:
        raise FilterError(f"{name} is not a JSON number; numbers must be finite")

    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise FilterError(f"is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise FilterError(f"nests too deeply (at most {MAX_DEPTH} levels)") from None
    return _filter(data, "", 0)


def _filter(data: Any, path: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(f"nests too deeply (at most {MAX_DEPTH} levels of and / or / not)", path)
    if not isinstance(data, dict):
        raise FilterError(f"must be a JSON object of conditions, got {_kind(data)}", path)
    if not data:
        raise FilterError("must hold at least one condition", path)
    parts = [_clause(name, value, path, depth) for name, value in data.items()]
    return parts[0] if len(parts) == 1 else _All(tuple(parts))


def _clause(name: str, value: Any, path: str, depth: int) -> Filter:
    here = _join(path, name)
    if name in ("and", "or"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"must be a non-empty list of filters, got {_kind(value)}", here)
        parts = tuple(_filter(v, f"{here}[{i}]", depth + 1) for i, v in enumerate(value))
        return _All(parts) if name == "and" else _Any(parts)
    if name == "not":
        return _Not(_filter(value, here, depth + 1))
    keys = tuple(name.split("."))
    if not name or any(not key for key in keys):
        raise FilterError("is not a field path (names joined by '.', none empty)", here or '""')
    if isinstance(value, dict):
        return _operators(keys, value, here)
    _scalar(value, here)
    return _Field(keys, (functools.partial(_same, wanted=value),), equal=((value,),))


def _operators(keys: tuple[str, ...], ops: dict[str, Any], path: str) -> _Field:
    if not ops:
        raise FilterError(f"must hold at least one operator ({', '.join(OPERATORS)})", path)
    tests: list[Callable[[Any], bool]] = []
    equal: list[tuple[Any, ...]] = []
    exists: bool | None = None
    bounds: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for op, value in ops.items():
        here = _join(path, op)
        if op == "eq":
            _scalar(value, here)
            tests.append(functools.partial(_same, wanted=value))
            equal.append((value,))
        elif op == "in":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:
                raise FilterError(f"must be a list of 1 to {MAX_IN_VALUES} values, got {_kind(value)}", here)
            for i, item in enumerate(value):
                _scalar(item, f"{here}[{i}]")
            tests.append(functools.partial(_one_of, choices=tuple(value)))
            equal.append(tuple(value))
        elif op in RANGES:
            if _is_number(value):
                bounds[op], kinds[op] = float(value), "number"
            elif isinstance(value, str):
                moment = instant(value)
                if moment is None:
                    raise FilterError(
                        f"{value!r} is not an ISO-8601 date or date-time (e.g. 2020-01-31 or "
                        "2020-01-31T12:00:00Z)",
                        here,
                    )
                bounds[op], kinds[op] = moment, "date"
            else:
                raise FilterError(f"must be a number or an ISO-8601 date string, got {_kind(value)}", here)
        elif op == "exists":
            if not isinstance(value, bool):
                raise FilterError(f"must be true or false, got {_kind(value)}", here)
            exists = value
        else:
            raise FilterError(f"is not an operator (one of {', '.join(OPERATORS)})", here)
    dates = "date" in kinds.values()
    if bounds:
        if len(set(kinds.values())) > 1:
            raise FilterError("mixes number and date bounds; give one kind", path)
        tests.append(_range_test(bounds, dates=dates))
    return _Field(keys, tuple(tests), exists, tuple(equal), tuple(bounds.items()), dates)


def _scalar(value: Any, path: str) -> None:
    if isinstance(value, str | bool) or (_is_number(value) and math.isfinite(value)):
        return
    raise FilterError(
        f"must be a string, a finite number or true/false, got {_kind(value)}"
        + (' (use {"exists": false} for a missing or null field)' if value is None else ""),
        path,
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if _is_number(value):
        return "a number"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return type(value).__name__
