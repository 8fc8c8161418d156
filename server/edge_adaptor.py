"""Fits the edge's linear Matryoshka adaptor (projection kind "adaptor", embedcore.Projection).

The default model is not MRL-trained: its leading dimensions are not a good short embedding,
and a PCA rotation only orders variance. The adaptor is a matrix W (dimensions, out_dims),
initialised at the PCA directions and trained so that, for every prefix d of PREFIXES, the
softmax over fit-corpus similarities of the renormalised prefixes x @ W[:, :d] matches (KL) the
softmax of the full-dimension similarities (the teacher), each anchor's own document excluded.
Anchors are the corpus vectors plus pseudo-queries: random sentences of the corpus documents,
embedded by the same model, so the short-query-to-document geometry is trained too.

Only corpus text and vectors are used (never queries or relevance labels). Measured with
all-MiniLM-L6-v2 on SciFact: see README (Edge client) and benchmarks/bench_edge.py, which also
checks transfer to STS-B. torch is imported inside :func:`fit_adaptor` only.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

import numpy as np

from embedcore import Projection, l2_normalize, pca_directions
from server.hardware import usable_cores
from server.settings import Settings

log = logging.getLogger(__name__)

OUT_DIMS = 256  # widest edge vector the adaptor serves; 384 on the edge gains nothing over 256
PREFIXES = (32, 64, 128, 256)  # trained jointly, equal weight: any of these dims works afterwards
TEMPERATURE = 0.05  # best held-out neighbour fidelity@10 among 0.02 / 0.05 / 0.1
STEPS = 200  # 600 steps overfits the 128/256 prefixes (SciFact 128: 0.622 vs 0.639)
LEARNING_RATE = 1e-3  # Adam; from the PCA start a small rate only refines the leading directions
BATCH_ANCHORS = 256  # anchors per step; each is scored against the whole fit corpus
# Below this many documents the adaptor overfits (the measurement: Settings.edge_adaptor_min_docs,
# the server's --edge-adaptor-min-docs, whose default this is); PCA is fitted then.
MIN_FIT_DOCS: int = Settings.edge_adaptor_min_docs
MAX_FIT_DOCS = 5000  # the softmax spans the fit corpus: cost is linear in it (~20 s at 5k, 2 cores)
PSEUDO_QUERIES_PER_DOC = 2  # sentences per document used as extra anchors (query-like vectors)
MIN_SENTENCE_CHARS = 30  # shorter fragments (headings, numbers) are not query-like
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def pseudo_query_sentences(
    texts: Sequence[str | None], *, per_doc: int = PSEUDO_QUERIES_PER_DOC, seed: int = 0
) -> list[str]:
    """Up to ``per_doc`` random sentences (> MIN_SENTENCE_CHARS characters) of each text, in
    document order; deterministic for a seed. Texts that are None (stored without text) or have
    no long sentence contribute nothing."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for text in texts:
        if not text:
            continue
        sentences = [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) > MIN_SENTENCE_CHARS]
        if not sentences:
            continue
        picks = rng.choice(len(sentences), size=min(per_doc, len(sentences)), replace=False)
        out.extend(sentences[int(i)] for i in picks)
    return out


def fit_adaptor(
    corpus: np.ndarray,
    pseudo_queries: np.ndarray | None = None,
    *,
    out_dims: int = OUT_DIMS,
    steps: int = STEPS,
    seed: int = 0,
    threads: int = 0,
) -> np.ndarray:
    """The adaptor matrix (dimensions, out_dims) float32 for ``corpus`` (n, dimensions) model
    vectors, with optional ``pseudo_queries`` (m, dimensions) as extra anchors. Deterministic
    for a seed and thread count. ``out_dims`` is capped at the model's dimensions; prefixes are
    PREFIXES below it plus ``out_dims`` itself. At most MAX_FIT_DOCS corpus vectors are used
    (a seeded sample), and pseudo-queries likewise at most PSEUDO_QUERIES_PER_DOC per one."""
    import torch
    import torch.nn.functional as F

    x = l2_normalize(corpus)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("need at least 2 corpus vectors to fit the adaptor")
    dimensions = x.shape[1]
    out_dims = min(out_dims, dimensions)
    prefixes = sorted({*(d for d in PREFIXES if d < out_dims), out_dims})
    rng = np.random.default_rng(seed)
    if len(x) > MAX_FIT_DOCS:
        x = x[np.sort(rng.choice(len(x), MAX_FIT_DOCS, replace=False))]
    anchors, own = x, np.arange(len(x))  # own[i]: the anchor's row in the corpus, -1 for none
    if pseudo_queries is not None and len(pseudo_queries):
        p = l2_normalize(pseudo_queries)
        if len(p) > PSEUDO_QUERIES_PER_DOC * len(x):
            p = p[np.sort(rng.choice(len(p), PSEUDO_QUERIES_PER_DOC * len(x), replace=False))]
        anchors = np.concatenate([x, p])
        own = np.concatenate([own, -np.ones(len(p), dtype=np.int64)])

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    try:
        generator = torch.Generator().manual_seed(seed)
        xc, xa, own_t = torch.from_numpy(x), torch.from_numpy(anchors), torch.from_numpy(own)
        w = torch.nn.Parameter(torch.from_numpy(pca_directions(x, out_dims)))
        opt = torch.optim.Adam([w], lr=LEARNING_RATE)
        for _ in range(steps):
            pick = torch.randint(0, len(anchors), (BATCH_ANCHORS,), generator=generator)
            a, a_own = xa[pick], own_t[pick]
            rows = torch.nonzero(a_own >= 0)[:, 0]
            with torch.no_grad():  # teacher: full-dimension cosine over the whole fit corpus
                t = a @ xc.T
                t[rows, a_own[rows]] = -1e9  # a document is not its own neighbour
                target = torch.softmax(t / TEMPERATURE, dim=1)
            yc, ya = xc @ w, a @ w
            loss = torch.zeros(())
            for d in prefixes:  # student: every Matryoshka prefix at once
                s = F.normalize(ya[:, :d], dim=1) @ F.normalize(yc[:, :d], dim=1).T
                s = s.index_put((rows, a_own[rows]), torch.tensor(-1e9))
                loss = loss + F.kl_div(
                    torch.log_softmax(s / TEMPERATURE, dim=1), target, reduction="batchmean"
                )
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        matrix = w.detach().numpy().astype(np.float32)
    finally:
        torch.set_num_threads(previous_threads)
    log.info(
        "edge adaptor fitted on %d documents + %d pseudo-queries (%d outputs, prefixes %s) in %.1fs",
        len(x),
        len(anchors) - len(x),
        out_dims,
        prefixes,
        time.perf_counter() - started,
    )
    return matrix


def neighbour_fidelity(
    projection: Projection, queries: np.ndarray, corpus: np.ndarray, dims: int, *, k: int = 10
) -> float:
    """Mean share of each query's full-dimension top-``k`` corpus neighbours that the
    ``projection`` at ``dims`` also ranks in its top ``k``, in [0, 1]. ``queries`` (m, D) and
    ``corpus`` (n, D) are model vectors; exact search both ways (the corpus is a fit sample)."""
    q, x = l2_normalize(queries), l2_normalize(corpus)
    k = min(k, len(x))
    if not len(q) or k == 0:
        return 0.0
    full = np.argpartition(-(q @ x.T), k - 1, axis=1)[:, :k]
    short = np.argpartition(-(projection.apply(q, dims) @ projection.apply(x, dims).T), k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(full, short, strict=True)]))
