"""Search over one collection: the approximate usearch index by default; brute force for
``exact``, for Matryoshka ``dimensions`` and for a quantized (int8 / ubinary) first pass whose
best ``k * rescore_multiplier`` candidates are rescored at full precision.

Results are documents: a document stored as several chunks scores as its best chunk, and its
hit carries that chunk's character span (and text, as the snippet). Every path ranks documents,
not vectors: the index and brute force over-fetch chunks and keep each document's best, and the
quantized first pass keeps the ``k * rescore_multiplier`` documents whose best chunk scores
highest, then rescores all their chunks.

Modes: DENSE (above), LEXICAL (BM25 over the stored texts: :mod:`server.store.lexical`; no query
embedding) and HYBRID: a dense and a lexical candidate list, each ``max(k, 100)`` deep, fused by
:mod:`server.fusion` (RRF, or a weighted sum of min-max normalized scores). A lexical hit covers
the whole document (its span is the whole text); a hybrid hit keeps its dense side's best chunk.

Brute-force paths use a per-collection matrix of normalized vectors (one row per chunk), cached
until the collection's sequence moves.

A response is bounded in bytes, not only by ``k`` (server.message_size): every hit keeps its id
and score; texts fill what is left of the message limit in rank order, and a text that does not
fit is cut (``text_truncated``); only when the hits' metadata alone would not fit is it left out
of the lowest-ranked hits (``metadata_omitted``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from embedcore import l2_normalize, truncate_dims
from server import fusion
from server import message_size as size
from server.embedder import Embedder, Priority
from server.errors import InvalidArgument, NotFound, PreconditionFailed
from server.ingest import stale_message, validate_collection
from server.model import ModelSpec
from server.store import Indexes, Store
from server.store.lexical import LexicalIndexes
from server.validation import check_characters
from server.vectors import check_truncate_dim

FirstPass = Literal["float", "int8", "ubinary"]
Mode = Literal["dense", "lexical", "hybrid"]
FusionKind = Literal["rrf", "weighted"]
MAX_RESCORE_MULTIPLIER = 100


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    query: str
    k: int = 10
    exact: bool = False
    truncate_dim: int | None = None  # Matryoshka target (exact search at that width)
    first_pass: FirstPass = "float"
    rescore_multiplier: int = 4
    prompt_name: str | None = None  # None: the model's query prompt
    include_text: bool = True
    mode: Mode = "dense"
    fusion: FusionKind | None = None  # None: unset (HYBRID: RRF)
    alpha: float | None = None  # WEIGHTED: the dense side's weight; None: fusion.DEFAULT_ALPHA
    rrf_k: int | None = None  # RRF: the rank constant; None: fusion.DEFAULT_RRF_K


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # dense: cosine similarity of the best chunk; lexical: BM25; hybrid: fused
    text: str
    metadata: dict[str, Any]
    text_truncated: bool = False  # cut to keep the response under the message limit
    metadata_omitted: bool = False  # left out for the same reason
    # The best chunk: characters [snippet_start, snippet_stop) of the document's text (the
    # whole text for a document embedded whole), and its text for a document stored as several
    # chunks ("" otherwise, or without include_text or a stored text).
    snippet_start: int = 0
    snippet_stop: int = 0
    snippet: str = ""


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    sequence: int
    queue_ns: int = 0
    tokenization_ns: int = 0
    inference_ns: int = 0
    tokens: int = 0


@dataclass
class _Matrix:
    sequence: int
    ids: list[str]  # per row (a chunked document's id on each of its rows)
    vectors: np.ndarray  # normalized float32 (n, full dims)
    ordinals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) chunk of each row
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) document number
    documents: int = 0
    # (kind, dims) -> truncated or quantized copies, made on first use; same lifetime as vectors
    derived: dict[tuple[str, int], tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def view(self, kind: str, dims: int) -> tuple[np.ndarray, np.ndarray | None]:
        """("float", dims): the renormalized truncation; "int8"/"ubinary": first-pass codes."""
        found = self.derived.get((kind, dims))
        if found is None:
            if kind == "float":
                base = self.vectors
                found = (base if dims >= base.shape[1] else truncate_dims(base, dims), None)
            else:
                found = _quantize(self.view("float", dims)[0], kind)
            self.derived[(kind, dims)] = found
        return found


class Searcher:
    def __init__(
        self,
        store: Store,
        indexes: Indexes,
        embedder: Embedder,
        spec: ModelSpec,
        max_k: int,
        *,
        max_message_bytes: int,
        lexical: LexicalIndexes | None = None,
    ) -> None:
        """``max_message_bytes``: the server's gRPC message limit, which a response must fit.
        ``lexical``: the BM25 indexes (None: LEXICAL and HYBRID are FAILED_PRECONDITION)."""
        self.store, self.indexes, self.embedder, self.spec, self.max_k = store, indexes, embedder, spec, max_k
        self.lexical = lexical
        self.max_response_bytes = max_message_bytes - size.RESPONSE_OVERHEAD
        self._matrices: dict[str, _Matrix] = {}
        self._lock = threading.Lock()

    def validate(self, q: SearchQuery) -> None:
        validate_collection(q.collection)
        if not q.query.strip():
            raise InvalidArgument("query must not be empty", field="query")
        check_characters(q.query, "query")
        if not 0 < q.k <= self.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.max_k}", field="k")
        if q.truncate_dim is not None:
            check_truncate_dim(q.truncate_dim, self.spec, "dimensions")
        if not 0 < q.rescore_multiplier <= MAX_RESCORE_MULTIPLIER:
            raise InvalidArgument(
                f"rescore_multiplier must be between 1 and {MAX_RESCORE_MULTIPLIER}",
                field="rescore_multiplier",
            )
        self._validate_mode(q)

    @staticmethod
    def _validate_mode(q: SearchQuery) -> None:
        """The mode's own fields, and the dense fields a LEXICAL search has no use for."""
        if q.mode == "lexical":
            dense_fields = {
                "exact": q.exact,
                "dimensions": q.truncate_dim is not None,
                "precision": q.first_pass != "float",
                "prompt_name": q.prompt_name is not None,
            }
            for name, used in dense_fields.items():
                if used:
                    raise InvalidArgument(
                        f"{name} shapes the dense ranking; mode LEXICAL has none (leave it unset)",
                        field=name,
                    )
        if q.fusion is not None and q.mode != "hybrid":
            raise InvalidArgument("fusion applies to mode HYBRID only (leave it unset)", field="fusion")
        weighted = q.mode == "hybrid" and q.fusion == "weighted"
        if q.alpha is not None:
            if not weighted:
                raise InvalidArgument(
                    "hybrid_alpha applies to mode HYBRID with fusion WEIGHTED only", field="hybrid_alpha"
                )
            if not (math.isfinite(q.alpha) and 0.0 <= q.alpha <= 1.0):
                raise InvalidArgument(
                    f"hybrid_alpha must be between 0 and 1, got {q.alpha}", field="hybrid_alpha"
                )
        if q.rrf_k is not None:
            if q.mode != "hybrid" or weighted:
                raise InvalidArgument("rrf_k applies to mode HYBRID with fusion RRF only", field="rrf_k")
            if not 1 <= q.rrf_k <= fusion.MAX_RRF_K:
                raise InvalidArgument(f"rrf_k must be between 1 and {fusion.MAX_RRF_K}", field="rrf_k")

    async def search(self, q: SearchQuery) -> SearchResult:
        self.validate(q)
        meta = await asyncio.to_thread(self.store.collection, q.collection)
        if meta is None:
            raise NotFound(f"no collection {q.collection!r}", field="collection")
        if meta.fingerprint != self.spec.fingerprint:
            raise PreconditionFailed(stale_message(q.collection, meta.fingerprint, self.spec.fingerprint))
        if q.mode != "dense" and self.lexical is None:
            raise PreconditionFailed("this server has no lexical indexes: only mode DENSE is available")
        if q.mode == "lexical":
            matches, lexical_sequence = await asyncio.to_thread(self._rank_lexical, q, q.k)
            lexical_hits = await asyncio.to_thread(self._hits, q, [(i, s, -1) for i, s in matches])
            return SearchResult(lexical_hits, lexical_sequence)
        prompt = self.spec.query_prompt_name if q.prompt_name is None else q.prompt_name
        encoded = await self.embedder.encode(
            [q.query], prompt_name=prompt, priority=Priority.INTERACTIVE, field=["query"]
        )
        query = encoded.vectors[0]
        if q.mode == "hybrid":
            ranked, sequence = await asyncio.to_thread(self._rank_hybrid, q, query)
        else:
            ranked, sequence = await asyncio.to_thread(self._rank, q, query)
        hits = await asyncio.to_thread(self._hits, q, ranked)
        return SearchResult(
            hits,
            sequence,
            encoded.queue_ns,
            encoded.tokenization_ns,
            encoded.inference_ns,
            sum(encoded.token_counts),
        )

    def _rank_lexical(self, q: SearchQuery, depth: int) -> tuple[list[tuple[str, float]], int]:
        """(id, BM25 score) of the best ``depth`` documents, best first; the sequence reflected."""
        assert self.lexical is not None  # checked by search()
        return self.lexical.search(q.collection, q.query, depth)

    def _rank_hybrid(self, q: SearchQuery, query: np.ndarray) -> tuple[list[tuple[str, float, int]], int]:
        """Both candidate lists, ``max(k, 100)`` deep, fused; the older of their sequences.
        Each hit keeps its dense side's best chunk (-1, the whole text, when only BM25 found it)."""
        depth = max(q.k, fusion.CANDIDATES)
        dense, dense_sequence = self._rank(dataclasses.replace(q, k=depth), query)
        lexical, lexical_sequence = self._rank_lexical(q, depth)
        dense_pairs = [(doc_id, score) for doc_id, score, _ in dense]
        if q.fusion == "weighted":
            alpha = fusion.DEFAULT_ALPHA if q.alpha is None else q.alpha
            fused = fusion.weighted(dense_pairs, lexical, alpha)
        else:
            fused = fusion.rrf([dense_pairs, lexical], fusion.DEFAULT_RRF_K if q.rrf_k is None else q.rrf_k)
        ordinal = {doc_id: o for doc_id, _, o in dense}
        ranked = [(doc_id, score, ordinal.get(doc_id, -1)) for doc_id, score in fused[: q.k]]
        return ranked, min(dense_sequence, lexical_sequence)

    def _rank(self, q: SearchQuery, query: np.ndarray) -> tuple[list[tuple[str, float, int]], int]:
        """(id, score, best chunk ordinal) of the best documents, best first; the sequence."""
        if not (q.exact or q.truncate_dim is not None or q.first_pass != "float"):
            index = self.indexes.get(q.collection)
            keys, scores, ordinals = index.search_chunks(query, q.k)
            ids = self.store.ids_for_keys(q.collection, [int(k) for k in keys])
            ranked = [
                (i, float(s), int(o)) for i, s, o in zip(ids, scores, ordinals, strict=True) if i is not None
            ]
            return ranked, index.sequence
        matrix = self.matrix(q.collection)
        if len(matrix.ids) == 0:
            return [], matrix.sequence
        dims = min(q.truncate_dim or self.spec.dimension, matrix.vectors.shape[1])
        vectors = matrix.view("float", dims)[0]
        qv = truncate_dims(query[None, :], dims)[0]
        chunked = len(matrix.ids) > matrix.documents
        if q.first_pass == "float":
            candidates = np.arange(len(matrix.ids))
        else:
            codes, scale = matrix.view(q.first_pass, dims)
            first = _first_pass_scores(codes, scale, qv, q.first_pass)
            if chunked:  # the documents whose best chunk scores highest, all their chunks
                per_doc = _per_document_max(first, matrix.owner, matrix.documents)
                best_docs = _top(per_doc, q.k * q.rescore_multiplier)
                candidates = np.flatnonzero(np.isin(matrix.owner, best_docs))
            else:
                candidates = _top(first, q.k * q.rescore_multiplier)
        scores = vectors[candidates] @ qv
        if chunked:
            best = candidates[_best_per_document(scores, matrix.owner[candidates], q.k)]
        else:
            best = candidates[_top(scores, q.k)]
        ranked = [(matrix.ids[i], float(vectors[i] @ qv), int(matrix.ordinals[i])) for i in best]
        return ranked, matrix.sequence

    def matrix(self, collection: str) -> _Matrix:
        """All live vectors of ``collection``, normalized; rebuilt when the collection changed."""
        with self._lock:
            meta = self.store.collection(collection)
            head = meta.sequence if meta else 0
            cached = self._matrices.get(collection)
            if cached is None or cached.sequence != head:
                keys, ids, ordinals, vectors = self.store.chunk_matrix(collection)
                # rows of one document are adjacent: a new document starts where the key changes
                starts = np.ones(len(keys), dtype=bool)
                starts[1:] = keys[1:] != keys[:-1]
                owner = np.cumsum(starts) - 1
                cached = _Matrix(
                    head,
                    ids,
                    l2_normalize(vectors) if len(ids) else vectors,
                    ordinals,
                    owner,
                    int(starts.sum()),
                )
                self._matrices[collection] = cached
            return cached

    def _hits(self, q: SearchQuery, ranked: list[tuple[str, float, int]]) -> list[Hit]:
        """Hits of (id, score, best chunk ordinal; -1: the whole document) in rank order."""
        docs = self.store.documents(q.collection, [doc_id for doc_id, _, _ in ranked])
        hits = []
        for (doc_id, score, ordinal), doc in zip(ranked, docs, strict=True):
            if doc is None or ordinal >= len(doc.hashes):  # deleted or changed since ranking
                continue
            text = (doc.text or "") if q.include_text else ""
            whole = ordinal < 0
            start, stop = (0, len(doc.text or "")) if whole else doc.span(ordinal)
            snippet = text[start:stop] if doc.chunks and not whole else ""
            metadata = doc.metadata if q.include_text else {}
            hits.append(Hit(doc_id, score, text, metadata, False, False, start, stop, snippet))
        return fit_hits(hits, self.max_response_bytes)


def fit_hits(hits: list[Hit], budget: int) -> list[Hit]:
    """``hits`` as they fit ``budget`` serialized bytes (see the module docstring)."""
    # Each hit: tag + length + (id, score, text, metadata, two flags, snippet offsets and
    # snippet); lengths at their widest. Snippets (at most a chunk window each) are kept whole.
    fixed = [1 + 5 + size.text(h.id) + 5 + 1 + 5 + 2 * size.FLAG + 2 * 6 + size.text(h.snippet) for h in hits]
    meta = [size.struct(h.metadata) for h in hits]
    used = sum(fixed) + sum(meta)
    omitted: set[int] = set()
    for i in reversed(range(len(hits))):
        if used <= budget:
            break
        if hits[i].metadata:
            used -= meta[i] - size.struct(None)
            omitted.add(i)
    room = budget - used
    out: list[Hit] = []
    for i, hit in enumerate(hits):
        raw = len(hit.text.encode("utf-8"))
        keep = min(raw, max(0, room))
        room -= keep
        if keep == raw and i not in omitted:
            out.append(hit)
            continue
        out.append(
            dataclasses.replace(
                hit,
                text=size.cut_utf8(hit.text, keep),
                text_truncated=keep < raw,
                metadata={} if i in omitted else hit.metadata,
                metadata_omitted=i in omitted,
            )
        )
    return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _per_document_max(scores: np.ndarray, owner: np.ndarray, documents: int) -> np.ndarray:
    """(documents,) float32: each document's best score among its rows (``owner``: (n,))."""
    out = np.full(documents, -np.inf, dtype=np.float32)
    np.maximum.at(out, owner, scores.astype(np.float32))
    return out


def _best_per_document(scores: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """Positions in ``scores`` of the ``k`` best documents' best rows, best first (``owner``:
    the document of each row)."""
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(owner[order], return_index=True)  # each document's best row in order
    return np.asarray(order[np.sort(first)[:k]])


def _quantize(vectors: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """First-pass codes of a collection: int8 with per-dimension symmetric scales taken from the
    collection (kept as float32 so the scoring matmul uses BLAS), or packed sign bits."""
    if kind == "int8":
        scale = np.clip(np.abs(vectors).max(axis=0), 1e-12, None) / 127.0
        return np.round(vectors / scale).astype(np.int8).astype(np.float32), scale
    return np.packbits(vectors > 0, axis=1), None


def _first_pass_scores(
    codes: np.ndarray, scale: np.ndarray | None, query: np.ndarray, kind: FirstPass
) -> np.ndarray:
    """Cheap approximate scores: int8 dot products, or the negated Hamming distance (ubinary)."""
    if kind == "int8" and scale is not None:
        qq = np.clip(np.round(query / scale), -127, 127).astype(np.float32)
        return np.asarray(codes @ qq, dtype=np.float32)
    distance = np.bitwise_count(np.bitwise_xor(codes, np.packbits(query > 0))).sum(axis=1).astype(np.float32)
    return np.asarray(-distance, dtype=np.float32)  # negated after the cast: it is unsigned
