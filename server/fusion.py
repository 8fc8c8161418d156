"""Fusion of ranked candidate lists (hybrid search): reciprocal rank fusion and a weighted sum of
min-max normalized scores. Pure functions over (id, score) lists, best first: the server's
HYBRID mode and the tuning script (``benchmarks/tune_hybrid.py``) use the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_RRF_K = 60
MAX_RRF_K = 1000
# The dense side's weight in WEIGHTED fusion when a request does not set one: the best of
# 0.0, 0.1, ..., 1.0 by nDCG@10 on SciFact titles as queries (benchmarks/tune_hybrid.py; never
# on SciFact's test queries).
DEFAULT_ALPHA = 0.5
CANDIDATES = 100  # each side's list is max(k, CANDIDATES) deep

Ranked = Sequence[tuple[str, float]]


def rrf(lists: Sequence[Ranked], k: int = DEFAULT_RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)) over the lists holding it (rank
    from 1); best first, ties in order of first appearance (the first list's order first)."""
    scores: dict[str, float] = {}
    for ranked in lists:
        for rank, (doc_id, _) in enumerate(ranked, 1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    return _ordered(scores)


def min_max(ranked: Ranked) -> dict[str, float]:
    """Scores scaled to [0, 1] over the list (its best 1, its worst 0); all equal: 1."""
    if not ranked:
        return {}
    values = [score for _, score in ranked]
    low, high = min(values), max(values)
    span = high - low
    return {doc_id: (score - low) / span if span > 0 else 1.0 for doc_id, score in ranked}


def weighted(dense: Ranked, lexical: Ranked, alpha: float = DEFAULT_ALPHA) -> list[tuple[str, float]]:
    """alpha * dense' + (1 - alpha) * lexical', each side min-max normalized over its list (an id
    missing from a list gets 0 there); best first, ties in order of first appearance."""
    d, lx = min_max(dense), min_max(lexical)
    scores = {
        doc_id: alpha * d.get(doc_id, 0.0) + (1 - alpha) * lx.get(doc_id, 0.0) for doc_id in {**d, **lx}
    }
    return _ordered(scores)


def _ordered(scores: dict[str, float]) -> list[tuple[str, float]]:
    # sorted() is stable and dicts keep insertion order: equal scores stay in first-seen order
    return sorted(scores.items(), key=lambda item: -item[1])
