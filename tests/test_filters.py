"""The metadata filter language (embedcore.filters) on its own: what each operator keeps, how
dates with and without offsets compare, errors naming the offending part, and the table
evaluation (server and edge) agreeing with the per-document one on random filters."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedcore import FilterError, MetadataTable, parse_filter

DOCS: list[dict[str, Any]] = [
    {"year": 2005, "source": "pubmed", "tags": ["a", "b"], "date": "2005-03-01", "open": True},
    {"year": 2010.0, "source": "arxiv", "tags": [], "date": "2010-06-30T23:00:00-02:00"},
    {"year": "2012", "source": "pubmed", "date": "2012-01-01T00:00:00Z", "nested": {"lab": "x"}},
    {"source": None, "open": False, "date": "not a date"},
    {},
]


def _kept(text: str) -> list[int]:
    f = parse_filter(text)
    return [i for i, d in enumerate(DOCS) if f.matches(d)]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('{"source": "pubmed"}', [0, 2]),
        ('{"year": 2010}', [1]),  # 2010 == 2010.0; the string "2012" is no number
        ('{"year": {"in": [2005, "2012"]}}', [0, 2]),
        ('{"year": {"gte": 2005, "lt": 2010}}', [0]),
        ('{"year": {"gt": 2005}}', [1]),
        ('{"tags": "b"}', [0]),  # any element of a list
        ('{"open": true}', [0]),
        ('{"open": {"eq": 1}}', []),  # true is not 1
        ('{"source": {"exists": false}}', [3, 4]),  # null counts as missing
        ('{"nested.lab": "x"}', [2]),
        ('{"not": {"source": "pubmed"}}', [1, 3, 4]),
        ('{"or": [{"year": 2005}, {"open": false}]}', [0, 3]),
        ('{"and": [{"source": "pubmed"}, {"year": {"exists": true}}]}', [0, 2]),
        ('{"source": "pubmed", "tags": {"exists": true}}', [0]),
        # Dates: naive is UTC; 2010-06-30T23:00-02:00 is 2010-07-01T01:00Z.
        ('{"date": {"gte": "2010-07-01"}}', [1, 2]),
        ('{"date": {"lt": "2010-07-01T01:00:00Z"}}', [0]),
        ('{"date": {"lte": "2010-07-01T03:00:00+02:00"}}', [0, 1]),
    ],
)
def test_operators_keep_what_the_grammar_says(text: str, kept: list[int]) -> None:
    assert _kept(text) == kept
    table = MetadataTable([str(i) for i in range(len(DOCS))], DOCS)
    assert np.flatnonzero(parse_filter(text).mask(table)).tolist() == kept


def test_naive_and_aware_times_compare_as_instants() -> None:
    f = parse_filter('{"t": {"gte": "2020-01-31T12:00:00Z", "lte": "2020-01-31T12:00:00"}}')
    assert f.matches({"t": "2020-01-31T12:00:00"})
    assert f.matches({"t": "2020-01-31T14:00:00+02:00"})
    assert not f.matches({"t": "2020-01-31T13:59:59+02:00"})


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"and": [{"year": 1}, {"year": {"gte": "abc"}}]}', "and[1].year.gte"),
        ('{"or": [{"not": {"a": {"in": [1, null]}}}]}', "or[0].not.a.in[1]"),
        ('{"a": {"between": [1, 2]}}', "a.between"),
        ('{"a": {"gte": 1, "lt": "2020-01-01"}}', "a"),
        ('{"a": null}', "a"),
        ('{"a": {"exists": 1}}', "a.exists"),
        ('{"and": {}}', "and"),
        ('{"not": []}', "not"),
        ('{"a": {}}', "a"),
        ('{"a..b": 1}', "a..b"),
        ("[]", ""),
        ("{}", ""),
        ('{"a": ', ""),
    ],
)
def test_a_malformed_filter_names_the_offending_part(text: str, path: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: " if path else "")


def test_limits_are_errors_not_crashes() -> None:
    with pytest.raises(FilterError, match="at most 65536"):
        parse_filter('{"a": "' + "x" * 70_000 + '"}')
    with pytest.raises(FilterError, match="nests too deeply"):
        parse_filter("[" * 50_000)
    with pytest.raises(FilterError, match="nests too deeply"):
        parse_filter('{"not": ' * 40 + '{"a": 1}' + "}" * 40)
    with pytest.raises(FilterError, match="finite"):
        parse_filter('{"a": {"gt": Infinity}}')


# -- random filters: the table evaluation is the per-document one ------------------------------

_VALUES = st.one_of(
    st.integers(0, 5),
    st.sampled_from([2.0, 3.5, "a", "b", "2020-01-01", "2021-06-01T00:00:00+05:00", "2021-06-01T00:00:00"]),
    st.booleans(),
)
_META = st.dictionaries(
    st.sampled_from(["x", "y", "z"]), st.one_of(st.none(), _VALUES, st.lists(_VALUES, max_size=3)), max_size=3
)


# Columns of scalars (and objects) only: evaluated with numpy, not value by value.
_SCALAR_META = st.dictionaries(
    st.sampled_from(["x", "y", "z"]),
    st.one_of(st.none(), _VALUES, st.fixed_dictionaries({"x": _VALUES})),
    max_size=3,
)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    field = st.sampled_from(["x", "y", "z"])
    op = st.one_of(
        _VALUES,
        st.fixed_dictionaries({"eq": _VALUES}),
        st.fixed_dictionaries({"in": st.lists(_VALUES, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"gte": st.integers(0, 5)}, optional={"lt": st.integers(0, 6)}),
        st.fixed_dictionaries({"gt": st.integers(0, 5)}, optional={"lte": st.integers(0, 6)}),
        st.fixed_dictionaries({"gt": st.sampled_from(["2020-01-01", "2021-06-01"])}),
        st.fixed_dictionaries({"lte": st.sampled_from(["2020-01-01", "2021-05-31T19:00:00Z"])}),
        st.fixed_dictionaries({"exists": st.booleans()}),
    )
    return st.builds(lambda f, o: {f: o}, field, op)


_FILTERS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(spec=_FILTERS, docs=st.lists(_META, min_size=1, max_size=12))
def test_table_evaluation_equals_per_document_evaluation(
    spec: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    f = parse_filter(json.dumps(spec))
    table = MetadataTable([str(i) for i in range(len(docs))], docs)
    assert f.mask(table).tolist() == [f.matches(d) for d in docs]


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(spec=_FILTERS, docs=st.lists(_SCALAR_META, min_size=1, max_size=12))
def test_vectorized_evaluation_equals_per_document_evaluation(
    spec: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    f = parse_filter(json.dumps(spec))
    table = MetadataTable([str(i) for i in range(len(docs))], docs)
    assert all(table.typed(keys) is not None for keys in (("x",), ("y",), ("z",)))
    assert f.mask(table).tolist() == [f.matches(d) for d in docs]
