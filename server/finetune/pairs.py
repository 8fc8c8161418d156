"""Training pairs from a collection's own stored texts: no queries, no labels.

Each pseudo-query is a piece of one stored document: its title (when the document's metadata has
one, as ``embed-server ingest`` stores it) or one of its sentences. The document is the positive;
with probability ``remove_query_prob`` the query sentence is cut out of it (the inverse cloze
task), so a pair cannot be solved by copying words alone. Hard negatives are the collection's
documents nearest to the query by exact search over the stored vectors (the base model's), minus

- the positive itself and every document with the same content hash (stored twice),
- near-duplicates of the positive: cosine of the stored vectors >= ``near_duplicate_cosine``,
- likely false negatives: a query-candidate score >= ``max_negative_ratio`` x the query's score
  for its positive (NV-Retriever's "TopK-PercPos" rule, 95%).

Batches (:func:`make_batches`) never hold two pairs whose documents are the same or near-
duplicates: MultipleNegativesRankingLoss uses every other pair's documents as negatives, so such
a pair would be trained against itself. numpy only; deterministic for a seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedcore import l2_normalize

MIN_QUERY_CHARS = 30  # shorter fragments (headings, numbers) are not query-like
MAX_QUERY_CHARS = 400  # a run-on "sentence" longer than this is a paragraph, not a query
SEARCH_DEPTH = 64  # candidates read per query before the filters
CHUNK = 1024  # queries per matrix product (bounds memory: CHUNK x documents floats)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


@dataclass(frozen=True)
class Corpus:
    """A collection's documents that have stored text, with their stored (base model) vectors."""

    ids: list[str]
    texts: list[str]
    titles: list[str]  # "" when the metadata has none
    hashes: list[bytes]  # content hashes: equal hashes, equal stored content
    vectors: np.ndarray  # (documents, dimension) float32, L2-normalized

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class PseudoQuery:
    text: str
    doc: int  # row of its document in the corpus


@dataclass(frozen=True)
class TrainingPair:
    query: str
    doc: int  # the positive's corpus row
    positive: str  # the positive's text (the query sentence cut out, for some pairs)
    negatives: tuple[int, ...]  # corpus rows of the mined hard negatives


@dataclass
class MiningStats:
    """What the filters removed: the numbers a user needs to trust the pairs."""

    queries: int = 0
    pairs: int = 0
    same_content_skipped: int = 0
    near_duplicates_skipped: int = 0
    false_negatives_skipped: int = 0
    without_negatives: int = 0  # queries dropped: every candidate was filtered out
    score_gap: list[float] = field(default_factory=list)  # positive - chosen negative score

    def to_json(self) -> dict[str, float | int]:
        gaps = np.asarray(self.score_gap, dtype=np.float64)
        return {
            "queries": self.queries,
            "pairs": self.pairs,
            "same_content_skipped": self.same_content_skipped,
            "near_duplicates_skipped": self.near_duplicates_skipped,
            "false_negatives_skipped": self.false_negatives_skipped,
            "without_negatives": self.without_negatives,
            "mean_score_gap": round(float(gaps.mean()), 4) if len(gaps) else 0.0,
        }


def sentences_of(text: str, title: str = "") -> list[str]:
    """The query-like sentences of ``text`` (after its title, when it starts with it)."""
    body = text[len(title) :] if title and text.startswith(title) else text
    return [
        s.strip() for s in _SENTENCE_END.split(body) if MIN_QUERY_CHARS <= len(s.strip()) <= MAX_QUERY_CHARS
    ]


def pseudo_queries(corpus: Corpus, rows: Sequence[int], *, per_doc: int, seed: int) -> list[PseudoQuery]:
    """Up to ``per_doc`` distinct pseudo-queries for each corpus row in ``rows`` (its title, when
    long enough, and its sentences, picked at random), in row order; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out: list[PseudoQuery] = []
    for row in rows:
        title = corpus.titles[row].strip()
        candidates = sentences_of(corpus.texts[row], title)
        if len(title) >= MIN_QUERY_CHARS and title != corpus.texts[row].strip():
            candidates.insert(0, title)
        candidates = list(dict.fromkeys(candidates))
        if not candidates:
            continue
        picks = rng.choice(len(candidates), size=min(per_doc, len(candidates)), replace=False)
        out.extend(PseudoQuery(candidates[int(i)], row) for i in sorted(picks))
    return out


def positive_text(document: str, query: str, remove: bool) -> str:
    """``document`` itself, or with ``query`` cut out (whitespace closed up) when ``remove``;
    a document that would be left empty is kept whole."""
    if not remove or query not in document:
        return document
    rest = " ".join(document.replace(query, " ", 1).split())
    return rest or document


def mine_pairs(
    corpus: Corpus,
    queries: Sequence[PseudoQuery],
    query_vectors: np.ndarray,
    *,
    num_negatives: int,
    near_duplicate_cosine: float,
    max_negative_ratio: float,
    remove_query_prob: float,
    seed: int,
) -> tuple[list[TrainingPair], MiningStats]:
    """One :class:`TrainingPair` per query that keeps ``num_negatives`` hard negatives after the
    filters (module docstring); ``query_vectors`` (queries, dimension) come from the base model,
    the model of ``corpus.vectors``. Exact search, ``CHUNK`` queries per matrix product."""
    if len(queries) != len(query_vectors):
        raise ValueError(f"{len(queries)} queries but {len(query_vectors)} query vectors")
    rng = np.random.default_rng(seed)
    docs = corpus.vectors
    q = l2_normalize(np.asarray(query_vectors, dtype=np.float32))
    depth = min(SEARCH_DEPTH, len(corpus))
    stats = MiningStats(queries=len(queries))
    pairs: list[TrainingPair] = []
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start : start + CHUNK]
        scores = q[start : start + len(chunk)] @ docs.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for i, query in enumerate(chunk):
            order = top[i][np.argsort(-scores[i, top[i]], kind="stable")]
            negatives = _filter_candidates(
                corpus, query.doc, order, scores[i], num_negatives, near_duplicate_cosine,
                max_negative_ratio, stats,
            )  # fmt: skip
            if len(negatives) < num_negatives:
                stats.without_negatives += 1
                continue
            remove = bool(rng.random() < remove_query_prob)
            text = positive_text(corpus.texts[query.doc], query.text, remove)
            pairs.append(TrainingPair(query.text, query.doc, text, tuple(negatives)))
            stats.score_gap.append(float(scores[i, query.doc] - scores[i, negatives[0]]))
    stats.pairs = len(pairs)
    return pairs, stats


def _filter_candidates(
    corpus: Corpus,
    positive: int,
    order: np.ndarray,
    scores: np.ndarray,
    wanted: int,
    near_duplicate_cosine: float,
    max_negative_ratio: float,
    stats: MiningStats,
) -> list[int]:
    """The first ``wanted`` candidates of ``order`` (best first) that pass the filters."""
    if wanted == 0:
        return []
    pos_vector, pos_hash = corpus.vectors[positive], corpus.hashes[positive]
    limit = max_negative_ratio * float(scores[positive])
    out: list[int] = []
    for candidate in (int(c) for c in order):
        if candidate == positive:
            continue
        if corpus.hashes[candidate] == pos_hash:
            stats.same_content_skipped += 1
        elif float(corpus.vectors[candidate] @ pos_vector) >= near_duplicate_cosine:
            stats.near_duplicates_skipped += 1
        elif float(scores[candidate]) >= limit:
            stats.false_negatives_skipped += 1
        else:
            out.append(candidate)
            if len(out) == wanted:
                break
    return out


def near_duplicate_groups(corpus: Corpus, rows: Sequence[int], near_duplicate_cosine: float) -> np.ndarray:
    """A group id per corpus row (-1 for rows not in ``rows``): rows with equal content or
    stored vectors at cosine >= ``near_duplicate_cosine`` share a group (transitively)."""
    wanted = np.unique(np.asarray(rows, dtype=np.int64))
    parent = {int(r): int(r) for r in wanted}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_hash: dict[bytes, int] = {}
    for r in wanted:
        first = by_hash.setdefault(corpus.hashes[int(r)], int(r))
        union(first, int(r))
    vectors = corpus.vectors[wanted]
    for start in range(0, len(wanted), CHUNK):
        sims = vectors[start : start + CHUNK] @ vectors.T
        for i, j in zip(*np.nonzero(sims >= near_duplicate_cosine), strict=True):
            if start + i < j:
                union(int(wanted[start + i]), int(wanted[j]))
    groups = np.full(len(corpus), -1, dtype=np.int64)
    for r in wanted:
        groups[int(r)] = find(int(r))
    return groups


def make_batches(
    pairs: Sequence[TrainingPair], batch_size: int, groups: np.ndarray, *, seed: int
) -> list[list[int]]:
    """Indexes into ``pairs``, ``batch_size`` per batch, shuffled (seeded); no two pairs of one
    batch touch the same near-duplicate group (``groups`` from :func:`near_duplicate_groups` over
    every positive and negative). A pair that does not fit waits for the next batch; the last,
    incomplete batch is dropped (one tensor shape per step, one schedule per seed)."""
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(pairs))]
    members = [{int(groups[p.doc]), *(int(groups[n]) for n in p.negatives)} for p in pairs]
    batches: list[list[int]] = []
    remaining = order
    while True:
        batch: list[int] = []
        used: set[int] = set()
        rest: list[int] = []  # passed over: first in line for the next batch, in order
        for index in remaining:
            if len(batch) < batch_size and not members[index] & used:
                batch.append(index)
                used |= members[index]
            else:
                rest.append(index)
        if len(batch) < batch_size:
            return batches
        batches.append(batch)
        remaining = rest
