"""``embed-server finetune COLLECTION --out DIR``: a Matryoshka model fine-tuned on the
collection's own stored texts (no queries, no labels; see server/finetune/).

Reads the store under ``--data-dir`` (stop the server first: the store takes one process; it is
released once read, a few seconds, and printed so), trains with a progress bar (loss, time left),
and saves a sentence-transformers model folder with its own fingerprint. Serve it with
``--model DIR`` (its collections re-embedded with ``embed-server reembed --model DIR``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

# flag -> (config field, help). Defaults come from FinetuneConfig, so they are stated once.
_OPTIONS: dict[str, tuple[str, str]] = {
    "--model": ("base_model", "base model: the one the collection is stored under"),
    "--batch-size": ("batch_size", "pairs per step (the other pairs' documents are its negatives)"),
    "--mini-batch-size": (
        "mini_batch_size",
        "> 0 and below --batch-size: gradient-cached loss, this many texts per pass (less memory)",
    ),
    "--epochs": ("epochs", "passes over the training pairs"),
    "--max-steps": ("max_steps", "stop after this many steps (0: --epochs decides)"),
    "--lr": ("learning_rate", "AdamW learning rate (linear warm-up, then linear decay)"),
    "--max-tokens": ("max_tokens", "training truncation in tokens (0: the model's own)"),
    "--queries-per-doc": ("queries_per_doc", "pseudo-queries (title, sentences) drawn per document"),
    "--max-documents": ("max_documents", "documents that get pseudo-queries (a seeded sample; 0: all)"),
    "--negatives": ("num_negatives", "mined hard negatives per pair"),
    "--near-duplicate-cosine": (
        "near_duplicate_cosine",
        "stored-vector cosine from which a document counts as a near-duplicate (never a negative)",
    ),
    "--max-negative-ratio": (
        "max_negative_ratio",
        "a negative must score below this fraction of the positive's score (false-negative guard)",
    ),
    "--remove-query-prob": ("remove_query_prob", "share of positives with the query sentence cut out"),
    "--validation-queries": ("validation_queries", "held-out pseudo-queries measured after training"),
    "--validation-documents": ("validation_documents", "documents they are searched among"),
    "--seed": ("seed", "seed of every random choice (same seed, same model on the same machine)"),
    "--max-minutes": ("max_minutes", "time budget for the whole run, reading to saving (0: none)"),
    "--device": ("device", "auto (a GPU when torch sees one), cpu, cuda, cuda:N"),
    "--dtype": ("dtype", "auto (bfloat16 where native), float32, bfloat16"),
    "--threads": ("threads", "torch threads (0: the usable cores)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from server.finetune.config import FinetuneConfig

    defaults = FinetuneConfig()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(FinetuneConfig)}
    parser.add_argument("collection", help="collection to learn from (its stored texts and vectors)")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write (new or empty)")
    parser.add_argument("--data-dir", type=Path, default=Path("./data"), help="the server's --data-dir")
    parser.add_argument(
        "--dims",
        default=",".join(str(d) for d in defaults.matryoshka_dims),
        help="Matryoshka dims trained (comma-separated; the model's width is always included)",
    )
    for flag, (name, help_text) in _OPTIONS.items():
        default = getattr(defaults, name)
        parser.add_argument(
            flag, dest=name, type=types[name], default=default, help=f"{help_text} ({default})"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import onnxruntime  # noqa: F401  (before usearch, which the store imports; see server/app.py)

    from server.errors import ServiceError
    from server.finetune import FinetuneConfig, finetune_collection, format_table
    from server.model import ModelNotFoundError
    from server.store import StoreError

    try:
        dims = tuple(int(d) for d in str(args.dims).split(",") if d.strip())
    except ValueError:
        print(
            f"embed-server finetune: --dims must be comma-separated integers, got {args.dims!r}",
            file=sys.stderr,
        )
        return 2
    config = FinetuneConfig(
        matryoshka_dims=dims, **{name: getattr(args, name) for name, _ in _OPTIONS.values()}
    )
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # its per-call INFO lines
    try:
        result = finetune_collection(
            args.data_dir, args.collection, args.out, config, progress=not args.quiet
        )
    except (ServiceError, StoreError, ModelNotFoundError) as exc:
        print(f"embed-server finetune: {exc}", file=sys.stderr)
        return 2
    training = result.training
    print(
        f"fine-tuned on {result.train_pairs} pairs of {result.documents} documents of {result.collection!r}: "
        f"{training['steps']} steps in {training['seconds']:.0f} s"
        + (" (stopped by --max-minutes)" if training["stopped_by_budget"] else "")
    )
    if result.validation:
        v = result.validation
        print(f"held-out pseudo-queries ({v['queries']}, among {v['documents']} documents), nDCG@10:")
        print(format_table(v["base"], v["finetuned"]))
    print(f"saved {result.out_dir} (model {result.fingerprint}, base {result.base_fingerprint})")
    print(
        f"serve it: embed-server serve --model {result.out_dir}; stored collections move with "
        f"embed-server reembed --model {result.out_dir}"
    )
    return 0
