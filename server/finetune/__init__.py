"""Fine-tune a Matryoshka model on a collection's own stored texts (no queries, no labels).

``embed-server finetune COLLECTION --out DIR`` and :func:`finetune_collection` build pairs from
the collection's texts (:mod:`server.finetune.pairs`: pseudo-queries, hard negatives mined from
the stored vectors, near-duplicates filtered), train ``MatryoshkaLoss(MultipleNegativesRanking
Loss)`` over 384/256/128/64/32 dims (:mod:`server.finetune.train`), measure base vs fine-tuned on
held-out pseudo-queries (:mod:`server.finetune.validate`) and save a sentence-transformers model
folder with its own fingerprint, ready for ``--model`` (:mod:`server.finetune.run`).

The names below load on first use: the CLI reads :mod:`server.finetune.config` at start-up
without numpy, the store (usearch) or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.finetune.config import MATRYOSHKA_DIMS, FinetuneConfig
    from server.finetune.pairs import Corpus, MiningStats, PseudoQuery, TrainingPair, make_batches, mine_pairs
    from server.finetune.run import (
        RECORD_NAME,
        FinetuneResult,
        finetune_collection,
        finetune_corpus,
        read_corpus,
    )
    from server.finetune.validate import format_table, retrieval_at_dims

_EXPORTS = {
    "MATRYOSHKA_DIMS": "config",
    "FinetuneConfig": "config",
    "Corpus": "pairs",
    "MiningStats": "pairs",
    "PseudoQuery": "pairs",
    "TrainingPair": "pairs",
    "make_batches": "pairs",
    "mine_pairs": "pairs",
    "RECORD_NAME": "run",
    "FinetuneResult": "run",
    "finetune_collection": "run",
    "finetune_corpus": "run",
    "read_corpus": "run",
    "format_table": "validate",
    "retrieval_at_dims": "validate",
}
__all__ = [
    "MATRYOSHKA_DIMS",
    "RECORD_NAME",
    "Corpus",
    "FinetuneConfig",
    "FinetuneResult",
    "MiningStats",
    "PseudoQuery",
    "TrainingPair",
    "finetune_collection",
    "finetune_corpus",
    "format_table",
    "make_batches",
    "mine_pairs",
    "read_corpus",
    "retrieval_at_dims",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'server.finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"server.finetune.{_EXPORTS[name]}"), name)
