"""Retrieval metrics with trec_eval's (pytrec_eval's) definitions, and Spearman for STS.

- A run is ordered by score descending, ties by document id descending (trec_eval's order).
- nDCG@10 (``ndcg_cut_10``): gain = graded relevance (negative counts as 0), discount
  log2(rank + 1); the ideal DCG uses every judged document of the query.
- Recall@k, MRR@10, MAP@10 (``map_cut_10``): a document is relevant when its relevance > 0.
  MRR@10 is the reciprocal rank of the first relevant document in the top 10 (else 0); MAP@10
  sums precision at each relevant rank <= 10 and divides by the query's number of relevant docs.
- Means are over the judged queries; a query the run has nothing for scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Run = Mapping[str, Mapping[str, float]]  # query id -> {doc id: score}
Qrels = Mapping[str, Mapping[str, int]]

RETRIEVAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10")


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Doc ids best first: score descending, then doc id descending (as trec_eval sorts)."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def query_metrics(ranking: Sequence[str], judged: Mapping[str, int]) -> dict[str, float]:
    relevant = {doc for doc, rel in judged.items() if rel > 0}
    n_rel = len(relevant)

    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:10]))
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:10]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal_gains))

    rr = 0.0
    hits = 0
    precision_sum = 0.0
    for i, doc in enumerate(ranking[:10]):
        if doc in relevant:
            hits += 1
            precision_sum += hits / (i + 1)
            if rr == 0.0:
                rr = 1.0 / (i + 1)

    def recall(k: int) -> float:
        return sum(doc in relevant for doc in ranking[:k]) / n_rel if n_rel else 0.0

    return {
        "ndcg@10": dcg / idcg if idcg > 0 else 0.0,
        "recall@10": recall(10),
        "recall@100": recall(100),
        "mrr@10": rr,
        "map@10": precision_sum / n_rel if n_rel else 0.0,
    }


def evaluate_run(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean of each metric over the queries in ``qrels``."""
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate")
    totals = dict.fromkeys(RETRIEVAL_METRICS, 0.0)
    for qid, judged in qrels.items():
        values = query_metrics(ranked(run.get(qid, {})), judged)
        for name in RETRIEVAL_METRICS:
            totals[name] += values[name]
    return {name: total / len(qrels) for name, total in totals.items()}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("spearman needs two 1-D sequences of the same length >= 2")
    ra = _average_ranks(a) - (len(a) + 1) / 2.0
    rb = _average_ranks(b) - (len(b) + 1) / 2.0
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator else 0.0
