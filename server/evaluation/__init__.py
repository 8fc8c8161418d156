"""Retrieval and STS evaluation of the embedding service, as its users would run it.

A client of the service (gRPC) and of the edge client's public API; the service runtime never
imports this package. Metrics follow pytrec_eval (trec_eval) definitions so numbers compare
with MTEB / BEIR leaderboards.
"""

from __future__ import annotations

from server.evaluation.datasets import BeirDataset, StsPairs, load_beir, load_sts
from server.evaluation.metrics import (
    RETRIEVAL_METRICS,
    Run,
    evaluate_run,
    spearman,
)

__all__ = [
    "RETRIEVAL_METRICS",
    "BeirDataset",
    "Run",
    "StsPairs",
    "evaluate_run",
    "load_beir",
    "load_sts",
    "spearman",
]
