"""One fine-tune: read a collection, build pairs, train, save the model, measure it held out.

The store is read first and released (it admits one process: stop the server for those seconds
only); training then runs on what was read. The saved folder is a sentence-transformers model
with its own fingerprint (``server.model.load_spec``) that declares its ``matryoshka_dims`` in
``config_sentence_transformers.json`` and records how it was made in ``finetune.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedcore import l2_normalize
from server.errors import InvalidArgument, NotFound, PreconditionFailed
from server.finetune.config import FinetuneConfig
from server.finetune.pairs import (
    Corpus,
    PseudoQuery,
    TrainingPair,
    make_batches,
    mine_pairs,
    near_duplicate_groups,
    pseudo_queries,
)
from server.finetune.train import (
    LoopOptions,
    autocast,
    matryoshka_loss,
    no_attention_dropout,
    pick_device,
    pick_dtype,
    seed_everything,
    train_loop,
)
from server.finetune.validate import format_table, retrieval_at_dims
from server.model import ModelSpec, load_spec

if TYPE_CHECKING:
    from server.store import Store

log = logging.getLogger(__name__)

RECORD_NAME = "finetune.json"
ENCODE_BATCH = 32
# Time kept back from --max-minutes for validation and saving, as a multiple of the measured
# cost of encoding their texts (the estimate comes from timing the mining encode).
VALIDATION_SAFETY = 1.5


@dataclass
class FinetuneResult:
    out_dir: Path
    fingerprint: str
    base_fingerprint: str
    collection: str
    documents: int
    train_pairs: int
    validation_queries: int
    mining: dict[str, Any]
    training: dict[str, Any]
    validation: dict[str, Any] = field(default_factory=dict)  # {"base"|"finetuned": {dims: metrics}}
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["out_dir"] = str(self.out_dir)
        return row


def read_corpus(store: Store, collection: str, spec: ModelSpec) -> Corpus:
    """The documents of ``collection`` that have stored text, and their stored vectors.

    NotFound for an unknown collection; PreconditionFailed when it is stored under another model
    than ``spec`` (its vectors could not mine negatives for this one) or has no stored text."""
    meta = store.collection(collection)
    if meta is None:
        known = ", ".join(sorted(store.collections())) or "none"
        raise NotFound(
            f"no collection {collection!r} in the store (collections: {known})", field="collection"
        )
    if meta.fingerprint != spec.fingerprint:
        raise PreconditionFailed(
            f"collection {collection!r} is stored under model {meta.fingerprint}, not {spec.fingerprint}: "
            "pass that model as the base (--model), or re-embed the collection first",
            field="model",
        )
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    hashes: list[bytes] = []
    for rows in store.iter_documents(collection):
        for doc_id, doc in rows:
            if doc.text:
                ids.append(doc_id)
                texts.append(doc.text)
                titles.append(str(doc.metadata.get("title") or ""))
                hashes.append(doc.content_hash)
    if not ids:
        raise PreconditionFailed(
            f"collection {collection!r} has no stored texts (ingested with store_text=false?): "
            "nothing to build training pairs from",
            field="collection",
        )
    vectors = l2_normalize(store.vectors(hashes))
    return Corpus(ids, texts, titles, hashes, vectors)


def finetune_collection(
    data_dir: Path,
    collection: str,
    out_dir: Path,
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune on the collection stored under ``data_dir`` (the server's --data-dir; the store
    is open only while it is read) and save the model to ``out_dir``."""
    from server.store import open_store

    config = config or FinetuneConfig()
    started = time.monotonic()
    spec = load_spec(config.base_model)
    config.check(spec)
    _check_out_dir(out_dir)
    store = open_store(data_dir)
    try:
        corpus = read_corpus(store, collection, spec)
    finally:
        store.close()
    log.info("read %d documents of %r; the store is released", len(corpus), collection)
    return finetune_corpus(corpus, collection, out_dir, config, progress=progress, started=started)


def finetune_corpus(
    corpus: Corpus,
    collection: str,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    progress: bool = True,
    started: float | None = None,
) -> FinetuneResult:
    """The fine-tune itself, on a corpus already read (see the module docstring)."""
    from sentence_transformers import SentenceTransformer

    started = time.monotonic() if started is None else started
    deadline = started + config.max_minutes * 60 if config.max_minutes else math.inf
    spec = load_spec(config.base_model)
    dims = config.check(spec)
    _check_out_dir(out_dir)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    seed_everything(config.seed, config.threads)
    model = SentenceTransformer(str(spec.path), device=device)
    model.max_seq_length = spec.max_tokens
    model.eval()
    if device == "cpu":
        no_attention_dropout(model)  # 3.5x faster training forward on CPU (see its docstring)
    query_prompt = spec.prompt_text(spec.query_prompt_name)
    document_prompt = spec.prompt_text(spec.document_prompt_name)

    # Pseudo-queries: validation documents first (their queries are never trained on).
    rng = np.random.default_rng(config.seed)
    rows = rng.permutation(len(corpus))
    queries = pseudo_queries(corpus, [int(r) for r in rows], per_doc=config.queries_per_doc, seed=config.seed)
    held_docs: list[int] = list(dict.fromkeys(q.doc for q in queries))[: config.validation_queries]
    first = {q.doc: q for q in reversed(queries)}  # each document's first pseudo-query
    held = {d: first[d] for d in held_docs}
    train_queries = [q for q in queries if q.doc not in held]
    if config.max_documents:
        allowed = set(list(dict.fromkeys(q.doc for q in train_queries))[: config.max_documents])
        train_queries = [q for q in train_queries if q.doc in allowed]
    held_queries = list(held.values())
    encode_started = time.monotonic()
    with autocast(device, dtype):  # the base model: mining, and the held-out baseline
        vectors = _encode(model, [query_prompt + q.text for q in [*train_queries, *held_queries]])
    encoded_chars = sum(len(q.text) for q in [*train_queries, *held_queries])
    chars_per_second = encoded_chars / max(time.monotonic() - encode_started, 1e-6)
    train_vectors, held_base = vectors[: len(train_queries)], vectors[len(train_queries) :]
    pairs, stats = mine_pairs(
        corpus,
        train_queries,
        train_vectors,
        num_negatives=config.num_negatives,
        near_duplicate_cosine=config.near_duplicate_cosine,
        max_negative_ratio=config.max_negative_ratio,
        remove_query_prob=config.remove_query_prob,
        seed=config.seed,
    )
    groups = near_duplicate_groups(
        corpus, [r for p in pairs for r in (p.doc, *p.negatives)], config.near_duplicate_cosine
    )
    per_epoch = len(make_batches(pairs, config.batch_size, groups, seed=config.seed))
    if per_epoch == 0:
        raise PreconditionFailed(
            f"collection {collection!r} gives {len(pairs)} training pairs, fewer than one batch "
            f"({config.batch_size}); lower --batch-size or add documents (mining: {stats.to_json()})",
            field="batch_size",
        )
    planned = config.max_steps or math.ceil(config.epochs * per_epoch)
    if config.max_steps and config.epochs > 0:
        planned = min(planned, math.ceil(config.epochs * per_epoch))
    val_docs = _validation_docs(corpus, held_docs, config)
    reserve = VALIDATION_SAFETY * _chars(corpus, val_docs, held, spec.max_tokens) / chars_per_second
    log.info(
        "%d training pairs (%d held out), %d batches per epoch, %d steps planned; mining %s",
        len(pairs), len(held), per_epoch, planned, stats.to_json(),
    )  # fmt: skip

    loss = matryoshka_loss(
        model, dims, scale=config.scale, batch_size=config.batch_size, mini_batch_size=config.mini_batch_size
    )
    if config.max_tokens:
        model.max_seq_length = min(config.max_tokens, spec.max_tokens)
    options = LoopOptions(
        device=device,
        dtype=dtype,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        planned_steps=planned,
        deadline=deadline - reserve,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
    )
    with _progress_bar(planned, progress) as report_step:
        report = train_loop(
            model, loss, pairs, corpus.texts, _epochs(pairs, config, groups), options, report_step
        )
    if report.steps == 0:
        raise PreconditionFailed(
            f"--max-minutes {config.max_minutes:g} left no time to train (reading and mining took "
            f"{time.monotonic() - started:.0f} s)",
            field="max_minutes",
        )
    model.max_seq_length = spec.max_tokens  # saved as the serving length, not the training one

    result = FinetuneResult(
        out_dir=out_dir,
        fingerprint="",
        base_fingerprint=spec.fingerprint,
        collection=collection,
        documents=len(corpus),
        train_pairs=len(pairs),
        validation_queries=len(held),
        mining=stats.to_json(),
        training={**asdict(report), "batches_per_epoch": per_epoch},
    )
    if held:
        with autocast(device, dtype):
            tuned = _validate(model, corpus, held_queries, val_docs, dims, query_prompt, document_prompt)
        base = retrieval_at_dims(held_base, corpus.vectors[val_docs], list(range(len(held_docs))), dims)
        result.validation = {
            "queries": len(held),
            "documents": len(val_docs),
            "base": base,
            "finetuned": tuned,
        }
        log.info(
            "held-out pseudo-queries (%d, among %d documents), nDCG@10:\n%s",
            len(held), len(val_docs), format_table(base, tuned),
        )  # fmt: skip
    _save(model, out_dir, dims)
    result.fingerprint = load_spec(str(out_dir.resolve())).fingerprint
    result.seconds = time.monotonic() - started
    _write_record(out_dir, config, result)
    return result


def _encode(model: Any, texts: Sequence[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, 0), np.float32)
    vectors = model.encode(
        list(texts), batch_size=ENCODE_BATCH, convert_to_numpy=True, normalize_embeddings=True
    )
    return np.asarray(vectors, dtype=np.float32)


def _validation_docs(corpus: Corpus, held_docs: Sequence[int], config: FinetuneConfig) -> list[int]:
    """The held-out queries' documents plus a seeded sample of the others, up to the limit."""
    wanted = max(config.validation_documents, len(held_docs))
    others = np.setdiff1d(np.arange(len(corpus)), np.asarray(held_docs, dtype=np.int64))
    rng = np.random.default_rng(config.seed + 1)
    extra = rng.choice(others, size=min(len(others), wanted - len(held_docs)), replace=False)
    return [*held_docs, *sorted(int(x) for x in extra)]


def _chars(corpus: Corpus, docs: Sequence[int], held: dict[int, PseudoQuery], max_tokens: int) -> int:
    """Characters validation encodes (a document counts up to ~4 characters per token kept)."""
    documents = sum(min(len(corpus.texts[d]), 4 * max_tokens) for d in docs)
    return documents + sum(len(q.text) for q in held.values())


def _validate(
    model: Any,
    corpus: Corpus,
    held: Sequence[PseudoQuery],
    docs: Sequence[int],
    dims: Sequence[int],
    query_prompt: str,
    document_prompt: str,
) -> dict[int, dict[str, float]]:
    """The fine-tuned model on the held-out pseudo-queries; query i's document is ``docs[i]``
    (see :func:`_validation_docs`)."""
    queries = _encode(model, [query_prompt + q.text for q in held])
    vectors = _encode(model, [document_prompt + corpus.texts[d] for d in docs])
    return retrieval_at_dims(queries, vectors, list(range(len(held))), dims)


def _epochs(pairs: Sequence[TrainingPair], config: FinetuneConfig, groups: np.ndarray) -> Iterator[list[int]]:
    """Batches epoch after epoch, each epoch shuffled with its own seed."""
    epoch = 0
    while True:
        yield from make_batches(pairs, config.batch_size, groups, seed=config.seed + epoch)
        epoch += 1


class _progress_bar:  # a context manager, named like one
    """tqdm with the loss and the time left; silent when ``show`` is False."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show = total, show
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, int, float], None]:
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="finetune", unit="step", dynamic_ncols=True)
        return self.update

    def update(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            return
        if total != self.bar.total:
            self.bar.total = total
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidArgument(f"--out {out_dir} exists and is not an empty directory", field="out")


def _save(model: Any, out_dir: Path, dims: Sequence[int]) -> None:
    """Write the model beside ``out_dir`` and rename it into place: never a half-written model."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save(str(stage), create_model_card=False)
        path = stage / "config_sentence_transformers.json"
        extra = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        extra["matryoshka_dims"] = list(dims)
        path.write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked before training)
        os.replace(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _write_record(out_dir: Path, config: FinetuneConfig, result: FinetuneResult) -> None:
    """``finetune.json``: how the model was made (not part of its fingerprint)."""
    record = {"config": asdict(config), "result": result.to_json()}
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
