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

Metadata filters (:mod:`embedcore.filters`, ``SearchQuery.filter``) are evaluated over a
per-collection table of the documents' metadata (read without their texts, each field's column
extracted once), cached with the collection's incarnation and sequence. Every path ranks only
the documents the filter keeps: brute force and the quantized first pass score only their rows;
the approximate index, which cannot filter inside its graph (usearch's Python binding), is
skipped for an exact search of the kept documents when at most ``filter_exact_max`` are kept
(``--search-filter-exact-max``, 1000 by default, measured: benchmarks/bench_filter.py), and
otherwise asked for ``k * documents / kept * FILTER_OVERSAMPLE`` candidates, falling back to
the exact search when fewer than k of them pass. LEXICAL ranks only kept rows; HYBRID fuses
two filtered lists.

A search may give a vector instead of a query (``SearchQuery.vector``): it is normalized and
used as the query's embedding would be.

A response is bounded in bytes, not only by ``k`` (server.message_size): every hit keeps its id
and score; texts fill what is left of the message limit in rank order, and a text that does not
fit is cut (``text_truncated``); only when the hits' metadata alone would not fit is it left out
of the lowest-ranked hits (``metadata_omitted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from embedcore import Filter, FilterError, MetadataTable, l2_normalize, parse_filter, truncate_dims
from server import fusion
from server import message_size as size
from server.embedder import Embedder, Priority
from server.errors import InvalidArgument, NotFound, PreconditionFailed, ServiceError
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
# Candidates asked of the approximate index per result a filter is expected to keep: twice
# what the kept share predicts, so one round usually holds k kept documents.
FILTER_OVERSAMPLE = 2.0


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
    filter: str = ""  # a metadata filter's JSON text (embedcore.filters); "": none
    vector: np.ndarray | None = None  # (dims,) float32: search by it instead of query


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
    fingerprint: str = ""  # of the model whose vectors answered ("" = the server's default)


@dataclass
class _Metadata:
    """Every live document's metadata of one collection version, and what a filter kept."""

    version: tuple[str, int]  # (incarnation, sequence)
    table: MetadataTable
    row_of: dict[str, int]


@dataclass(frozen=True)
class _Kept:
    """The documents a filter keeps: a mask over the metadata table's rows."""

    meta: _Metadata
    mask: np.ndarray  # (documents,) bool
    count: int

    def allows(self, ids: list[str]) -> np.ndarray:
        """(len(ids),) bool: which of ``ids`` are kept (an id the table lacks is not)."""
        rows = [self.meta.row_of.get(i, -1) for i in ids]
        out = np.zeros(len(ids), dtype=bool)
        for n, row in enumerate(rows):
            if row >= 0:
                out[n] = self.mask[row]
        return out


@dataclass
class _Matrix:
    sequence: int
    ids: list[str]  # per row (a chunked document's id on each of its rows)
    vectors: np.ndarray  # normalized float32 (n, full dims)
    ordinals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) chunk of each row
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) document number
    documents: int = 0
    doc_ids: list[str] = field(default_factory=list)  # (documents,) in id order
    incarnation: str = ""
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
        filter_exact_max: int = 1000,
        batch_max_queries: int = 64,
    ) -> None:
        """``max_message_bytes``: the server's gRPC message limit, which a response must fit.
        ``lexical``: the BM25 indexes (None: LEXICAL and HYBRID are FAILED_PRECONDITION).
        ``filter_exact_max``: a filter keeping at most this many documents is answered by an
        exact search over them instead of the approximate index. ``batch_max_queries``: the
        most searches one :meth:`search_batch` takes."""
        self.store, self.indexes, self.embedder, self.spec, self.max_k = store, indexes, embedder, spec, max_k
        self.lexical = lexical
        self.filter_exact_max = filter_exact_max
        self.batch_max_queries = batch_max_queries
        self.max_response_bytes = max_message_bytes - size.RESPONSE_OVERHEAD
        self._matrices: dict[str, _Matrix] = {}
        self._metadata: dict[str, _Metadata] = {}
        self._lock = threading.Lock()

    def validate(self, q: SearchQuery) -> Filter | None:
        """InvalidArgument naming the field for a query the server refuses; the parsed filter."""
        validate_collection(q.collection)
        if q.vector is not None:
            self._validate_vector(q)
        else:
            if not q.query.strip():
                raise InvalidArgument("query must not be empty (or give vector instead)", field="query")
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
        if not q.filter:
            return None
        try:
            return parse_filter(q.filter)
        except FilterError as exc:
            raise InvalidArgument(f"filter: {exc}", field="filter") from None

    def _validate_vector(self, q: SearchQuery) -> None:
        assert q.vector is not None  # the caller's branch
        if q.query:
            raise InvalidArgument("give query or vector, not both", field="vector")
        if q.mode != "dense":
            raise InvalidArgument(
                "vector searches the embeddings only: mode must be DENSE (LEXICAL and HYBRID need "
                "query text)",
                field="vector",
            )
        if q.prompt_name is not None:
            raise InvalidArgument("prompt_name applies to query text, not to vector", field="prompt_name")
        dims = self.spec.dimension
        if q.vector.shape != (dims,):
            raise InvalidArgument(
                f"vector has {q.vector.size} values; the model's vectors have {dims} dimensions",
                field="vector",
            )
        if not np.isfinite(q.vector).all():
            raise InvalidArgument("vector must hold finite numbers (no NaN or Infinity)", field="vector")
        if not np.any(q.vector):
            raise InvalidArgument("vector must not be all zeros (it has no direction)", field="vector")

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

    async def search_batch(self, queries: list[SearchQuery]) -> list[SearchResult]:
        """One result per query, in order; each response gets an equal share of the message
        limit. Every query is validated first: an error names its position (``requests[i]``)."""
        if not 0 < len(queries) <= self.batch_max_queries:
            raise InvalidArgument(
                f"requests must hold 1 to {self.batch_max_queries} searches, got {len(queries)}",
                field="requests",
            )
        for i, q in enumerate(queries):
            with positioned("requests", i):
                self.validate(q)
        budget = self.max_response_bytes // len(queries)

        async def one(i: int, q: SearchQuery) -> SearchResult:
            with positioned("requests", i):
                return await self.search(q, budget=budget)

        return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(queries))))

    async def search(self, q: SearchQuery, *, budget: int | None = None) -> SearchResult:
        """The best ``q.k`` documents (see the module docstring); ``budget``: the response's
        bytes (default: the message limit)."""
        kept_filter = self.validate(q)
        budget = self.max_response_bytes if budget is None else budget
        meta = await asyncio.to_thread(self.store.collection, q.collection)
        if meta is None:
            raise NotFound(f"no collection {q.collection!r}", field="collection")
        if meta.fingerprint != self.spec.fingerprint:
            raise PreconditionFailed(stale_message(q.collection, meta.fingerprint, self.spec.fingerprint))
        if q.mode != "dense" and self.lexical is None:
            raise PreconditionFailed("this server has no lexical indexes: only mode DENSE is available")
        kept = None
        if kept_filter is not None:
            kept = await asyncio.to_thread(self._kept, q.collection, kept_filter)
        if q.mode == "lexical":
            matches, lexical_sequence = await asyncio.to_thread(self._rank_lexical, q, q.k, kept)
            lexical_hits = await asyncio.to_thread(self._hits, q, [(i, s, -1) for i, s in matches], budget)
            return SearchResult(lexical_hits, lexical_sequence)
        if q.vector is not None:
            query = l2_normalize(np.asarray(q.vector, dtype=np.float32)[None, :])[0]
            timing: tuple[int, int, int, int] = (0, 0, 0, 0)
        else:
            prompt = self.spec.query_prompt_name if q.prompt_name is None else q.prompt_name
            encoded = await self.embedder.encode(
                [q.query], prompt_name=prompt, priority=Priority.INTERACTIVE, field=["query"]
            )
            query = encoded.vectors[0]
            timing = (
                encoded.queue_ns,
                encoded.tokenization_ns,
                encoded.inference_ns,
                sum(encoded.token_counts),
            )
        if q.mode == "hybrid":
            ranked, sequence = await asyncio.to_thread(self._rank_hybrid, q, query, kept)
        else:
            ranked, sequence = await asyncio.to_thread(self._rank, q, query, kept)
        hits = await asyncio.to_thread(self._hits, q, ranked, budget)
        return SearchResult(hits, sequence, *timing)

    def _kept(self, collection: str, kept_filter: Filter) -> _Kept:
        """What ``kept_filter`` keeps of the collection's live documents."""
        meta = self.metadata(collection)
        mask = kept_filter.mask(meta.table)
        return _Kept(meta, mask, int(mask.sum()))

    def metadata(self, collection: str) -> _Metadata:
        """Every live document's metadata, read once per collection version (texts not read)."""
        with self._lock:
            head = self.store.collection(collection)
            version = (head.incarnation, head.sequence) if head else ("", 0)
            cached = self._metadata.get(collection)
            if cached is None or cached.version != version:
                ids, metadata = self.store.metadata_rows(collection)
                cached = _Metadata(version, MetadataTable(ids, metadata), {d: i for i, d in enumerate(ids)})
                self._metadata[collection] = cached
            return cached

    def forget(self, collection: str) -> None:
        """Drop what is cached of ``collection`` (it was dropped)."""
        with self._lock:
            self._matrices.pop(collection, None)
            self._metadata.pop(collection, None)

    def _rank_lexical(
        self, q: SearchQuery, depth: int, kept: _Kept | None = None
    ) -> tuple[list[tuple[str, float]], int]:
        """(id, BM25 score) of the best ``depth`` documents (those ``kept``, when given), best
        first; the sequence reflected."""
        assert self.lexical is not None  # checked by search()
        return self.lexical.search(q.collection, q.query, depth, None if kept is None else kept.allows)

    def _rank_hybrid(
        self, q: SearchQuery, query: np.ndarray, kept: _Kept | None = None
    ) -> tuple[list[tuple[str, float, int]], int]:
        """Both candidate lists, ``max(k, 100)`` deep, fused; the older of their sequences.
        Each hit keeps its dense side's best chunk (-1, the whole text, when only BM25 found it)."""
        depth = max(q.k, fusion.CANDIDATES)
        dense, dense_sequence = self._rank(dataclasses.replace(q, k=depth), query, kept)
        lexical, lexical_sequence = self._rank_lexical(q, depth, kept)
        dense_pairs = [(doc_id, score) for doc_id, score, _ in dense]
        if q.fusion == "weighted":
            alpha = fusion.DEFAULT_ALPHA if q.alpha is None else q.alpha
            fused = fusion.weighted(dense_pairs, lexical, alpha)
        else:
            fused = fusion.rrf([dense_pairs, lexical], fusion.DEFAULT_RRF_K if q.rrf_k is None else q.rrf_k)
        ordinal = {doc_id: o for doc_id, _, o in dense}
        ranked = [(doc_id, score, ordinal.get(doc_id, -1)) for doc_id, score in fused[: q.k]]
        return ranked, min(dense_sequence, lexical_sequence)

    def _rank(
        self, q: SearchQuery, query: np.ndarray, kept: _Kept | None = None
    ) -> tuple[list[tuple[str, float, int]], int]:
        """(id, score, best chunk ordinal) of the best documents (among those ``kept``, when
        given), best first; the sequence."""
        approximate = not (q.exact or q.truncate_dim is not None or q.first_pass != "float")
        if approximate and (kept is None or kept.count > self.filter_exact_max):
            index = self.indexes.get(q.collection)
            total = len(index)
            wanted = q.k
            if kept is not None:
                if kept.count == 0:
                    return [], index.sequence
                wanted = min(max(total, q.k), math.ceil(q.k * max(total, 1) / kept.count * FILTER_OVERSAMPLE))
            keys, scores, ordinals = index.search_chunks(query, wanted)
            ids = self.store.ids_for_keys(q.collection, [int(k) for k in keys])
            ranked = [
                (i, float(s), int(o)) for i, s, o in zip(ids, scores, ordinals, strict=True) if i is not None
            ]
            if kept is None:
                return ranked, index.sequence
            allowed = kept.allows([doc_id for doc_id, _, _ in ranked])
            ranked = [r for r, ok in zip(ranked, allowed, strict=True) if ok]
            if len(ranked) >= min(q.k, kept.count) or wanted >= total:
                return ranked[: q.k], index.sequence
            # too few kept documents among the candidates: exact over the kept ones
        matrix = self.matrix(q.collection)
        if len(matrix.ids) == 0:
            return [], matrix.sequence
        dims = min(q.truncate_dim or self.spec.dimension, matrix.vectors.shape[1])
        vectors = matrix.view("float", dims)[0]
        qv = truncate_dims(query[None, :], dims)[0]
        chunked = len(matrix.ids) > matrix.documents
        rows = None if kept is None else self._kept_rows(matrix, kept)
        if rows is not None and len(rows) == 0:
            return [], matrix.sequence
        if q.first_pass == "float":
            candidates = np.arange(len(matrix.ids)) if rows is None else rows
        else:
            codes, scale = matrix.view(q.first_pass, dims)
            first = _first_pass_scores(codes if rows is None else codes[rows], scale, qv, q.first_pass)
            if chunked:  # the documents whose best chunk scores highest, all their chunks
                owners = matrix.owner if rows is None else matrix.owner[rows]
                per_doc = _per_document_max(first, owners, matrix.documents)
                wanted = q.k * q.rescore_multiplier
                if rows is not None:  # never a document the filter dropped (scored -inf)
                    wanted = min(wanted, len(np.unique(owners)))
                best_docs = _top(per_doc, wanted)
                within = np.flatnonzero(np.isin(owners, best_docs))
                candidates = within if rows is None else rows[within]
            else:
                best = _top(first, q.k * q.rescore_multiplier)
                candidates = best if rows is None else rows[best]
        scores = vectors[candidates] @ qv
        if chunked:
            best = candidates[_best_per_document(scores, matrix.owner[candidates], q.k)]
        else:
            best = candidates[_top(scores, q.k)]
        ranked = [(matrix.ids[i], float(vectors[i] @ qv), int(matrix.ordinals[i])) for i in best]
        return ranked, matrix.sequence

    @staticmethod
    def _kept_rows(matrix: _Matrix, kept: _Kept) -> np.ndarray:
        """The matrix rows of the documents ``kept``, ascending."""
        # The same collection version: the same documents in the same order; else match by id.
        same = matrix.doc_ids == kept.meta.table.ids
        doc_mask = kept.mask if same else kept.allows(matrix.doc_ids)
        return np.flatnonzero(doc_mask[matrix.owner]) if matrix.documents else np.zeros(0, np.int64)

    def matrix(self, collection: str) -> _Matrix:
        """All live vectors of ``collection``, normalized; rebuilt when the collection changed."""
        with self._lock:
            meta = self.store.collection(collection)
            head = meta.sequence if meta else 0
            incarnation = meta.incarnation if meta else ""
            cached = self._matrices.get(collection)
            if cached is None or cached.sequence != head or cached.incarnation != incarnation:
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
                    [ids[i] for i in np.flatnonzero(starts)],
                    incarnation,
                )
                self._matrices[collection] = cached
            return cached

    def _hits(self, q: SearchQuery, ranked: list[tuple[str, float, int]], budget: int) -> list[Hit]:
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
        return fit_hits(hits, budget)


@contextlib.contextmanager
def positioned(name: str, i: int) -> Iterator[None]:
    """A service error raised inside names item ``i`` of the list ``name`` (``requests[2].k``)."""
    try:
        yield
    except ServiceError as exc:
        where = f"{name}[{i}]"
        raise type(exc)(
            f"{where}: {exc.message}", field=f"{where}.{exc.field}" if exc.field else where
        ) from exc


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
